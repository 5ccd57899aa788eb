"""Learning curves of toy-teacher recipes: per-attribute accuracy of 8-step samples against
training steps, for the shipped recipe and variants (x0 parameterisation, a larger model).

The question it answers (issue #3): is the shipped teacher's shape accuracy (42%) limited by
the training budget (about 4,600 steps at batch 48 in 40 CPU minutes), by the model's size, or
by its v parameterisation? Run it where compute is cheap (a GPU) and read the curves.

Two modes, because the device machine cannot import the MiniLM package (its weights are too
large to carry):

    # here: caption features of the training pool and the eval prompts, fp16 safetensors
    python research/toy_teacher_scaling.py prepare --cache .scaling_cache --pool-prompts 6000
    # on the GPU machine, one process per variant (they share the GPU)
    python research/toy_teacher_scaling.py run --cache .scaling_cache --variant v \\
        --minutes 6 --device cuda --out research/results/toy_teacher_scaling_v.json

    # a check that it runs (~1 min on 2 CPUs): a small pool, a few steps, 16 eval prompts
    python research/toy_teacher_scaling.py prepare --cache /tmp/sc --pool-prompts 200
    python research/toy_teacher_scaling.py run --cache /tmp/sc --variant v --max-steps 4 \\
        --batch 8 --every 2 --pool-images 256 --eval-prompts 16 --out /tmp/sc/v.json

Accuracy is scored by the toy feature network on the same 500 prompts (seed 4242) and noise as
``research/toy_teacher_quality.py``; each attribute over the prompts that name it. This is a
study of the pixel-space recipe (patch 4 on 3x32x32 images), the shipped teacher before the
latent one; the shipped teacher samples an 8x8x8 latent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.toy.features import load_feature_net
from pipeline.toy.metrics import named_attribute_accuracy
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.teacher import (
    TeacherTrainConfig,
    image_pool,
    new_teacher,
    pool_texts,
    sample,
    train_flow_matching,
)

EVAL_PROMPTS, EVAL_SEED = 500, 4242
VARIANTS: dict[str, dict[str, object]] = {
    "v": {},  # the pixel-space recipe of the shipped teacher before the latent one
    "x0": {"prediction": "x0"},
    "v_big": {"dim": 256, "n_layers": 8, "n_heads": 8},
    "x0_big": {"dim": 256, "n_layers": 8, "n_heads": 8, "prediction": "x0"},
    "v_zero": {"init": "adaln_zero"},  # DiT's adaLN-Zero initialisation
}


def pack(features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([f.shape[0] for f in features], dtype=torch.int64)
    return {"tokens": torch.cat(features).half(), "lengths": lengths}


def unpack(tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return list(tensors["tokens"].float().split(tensors["lengths"].tolist()))


def prepare(cache: Path, pool_prompts: int) -> None:
    from pipeline.toy.text_encoder import MiniLMTextEncoder

    cache.mkdir(parents=True, exist_ok=True)
    encoder = MiniLMTextEncoder()
    cfg = TeacherTrainConfig(pool_prompts=pool_prompts)
    texts = pool_texts(cfg)
    save_file(pack(encoder.encode(texts)), str(cache / "pool_caps.safetensors"))
    eval_texts = [p.text for p in generate_prompts(EVAL_PROMPTS, seed=EVAL_SEED)]
    save_file(pack(encoder.encode(eval_texts)), str(cache / "eval_caps.safetensors"))
    (cache / "meta.json").write_text(json.dumps({"pool_prompts": pool_prompts,
                                                 "distinct_texts": len(texts)}))
    print(f"wrote {cache}: {len(texts)} pool texts, {len(eval_texts)} eval prompts")


def accuracy(model, eval_caps, noise, steps: int, prediction: str, feature_net) -> dict:
    n = len(noise)
    prompts = generate_prompts(EVAL_PROMPTS, seed=EVAL_SEED)[:n]
    device = noise.device
    images = torch.cat([
        sample(model, [c.to(device) for c in eval_caps[i : i + 250]], noise[i : i + 250], steps,
               prediction).clamp(-1, 1)
        for i in range(0, n, 250)])
    with torch.no_grad():
        predictions = feature_net.predict(images.float())
    return named_attribute_accuracy(prompts, predictions)


def run(args: argparse.Namespace) -> None:
    meta = json.loads((args.cache / "meta.json").read_text())
    overrides = VARIANTS[args.variant]
    # The scaling study is of the pixel-space recipe (patch 4 on 32x32 images).
    cfg = TeacherTrainConfig(minutes=args.minutes, batch=args.batch, lr=args.lr,
                             space="pixel", patch=4, guidance=1.0,  # flow matching only
                             pool_prompts=meta["pool_prompts"], pool_images=args.pool_images,
                             max_steps=args.max_steps, device=args.device,
                             **overrides)  # type: ignore[arg-type]
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    caps = unpack(load_file(str(args.cache / "pool_caps.safetensors")))
    eval_caps = unpack(load_file(str(args.cache / "eval_caps.safetensors")))
    eval_caps = eval_caps[:args.eval_prompts]
    x0_pool, cap_ids, caps = image_pool(cfg, print, caps=caps)
    # The same noise as the 500-prompt runs (the first n of it with --eval-prompts n).
    noise = torch.randn((EVAL_PROMPTS, 3, 32, 32),  # pixel space: the images themselves
                        generator=torch.Generator().manual_seed(EVAL_SEED))
    noise = noise[:args.eval_prompts].to(device)
    feature_net = load_feature_net().to(device)
    model = new_teacher(cfg)
    params = sum(p.numel() for p in model.parameters())
    result: dict[str, object] = {
        "variant": args.variant, "overrides": overrides, "parameters": params,
        "batch": cfg.batch, "lr": cfg.lr, "minutes": cfg.minutes, "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "pool": meta, "eval_prompts": len(noise), "curve": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    train_start = time.perf_counter()

    def checkpoint(step: int, ema) -> None:
        ema.eval()
        acc = accuracy(ema, eval_caps, noise, 8, cfg.prediction, feature_net)
        ema.train()
        elapsed = time.perf_counter() - train_start
        result["curve"].append({"step": step, "samples": step * cfg.batch,  # type: ignore[union-attr]
                                "seconds": round(elapsed, 1), "accuracy_8_step": acc})
        print(f"[{args.variant}] step {step} ({step * cfg.batch} samples, {elapsed:.0f} s): "
              f"{acc}", flush=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    ema, info = train_flow_matching(model, x0_pool, cap_ids, caps, cfg, print, start=start,
                                    checkpoint=checkpoint, checkpoint_every=args.every)
    ema = ema.to(device)
    result["info"] = info
    result["samples_per_second"] = round(info["steps"] * cfg.batch
                                         / (time.perf_counter() - train_start), 1)
    for steps in (8, 2):
        result[f"final_accuracy_{steps}_step"] = accuracy(ema, eval_caps, noise, steps,
                                                          cfg.prediction, feature_net)
    print(f"[{args.variant}] final: {info['steps']} steps; 8-step "
          f"{result['final_accuracy_8_step']}; 2-step {result['final_accuracy_2_step']}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--pool-prompts", type=int, default=6000)
    r = sub.add_parser("run")
    r.add_argument("--cache", type=Path, required=True)
    r.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    r.add_argument("--minutes", type=float, default=6.0)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--lr", type=float, default=5e-4)
    r.add_argument("--every", type=int, default=1000, help="steps between evaluations")
    r.add_argument("--max-steps", type=int, default=100_000)
    r.add_argument("--pool-images", type=int, default=50_000, help="renders in the pool")
    r.add_argument("--eval-prompts", type=int, default=EVAL_PROMPTS,
                   help=f"score on the first N of the {EVAL_PROMPTS} eval prompts")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.mode == "run" and not 1 <= args.eval_prompts <= EVAL_PROMPTS:
        parser.error(f"--eval-prompts: 1 to {EVAL_PROMPTS}")
    if args.mode == "prepare":
        prepare(args.cache, args.pool_prompts)
    else:
        run(args)


if __name__ == "__main__":
    main()
