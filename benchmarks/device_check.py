"""CUDA-path check on a lent GPU: 2-step versus 8-step sampling (bf16) of the shipped toy
teacher and of a Z-Image-Turbo-sized transformer, the toy teacher's bf16 training step, a
6B fwd+bwd memory probe, and end to end (prompt to decoded image, Qwen3-4B and the FLUX VAE
included, all random weights) the export's 2-step ``TwoStepPipeline`` against the stock
8-step ``ZImagePipeline`` at 1024 px.

The ratio is 8-step time over 2-step time, both measured in the same run on the same inputs
(the 2 steps are the student's schedule, sigma 1 -> 0.75 -> 0; 8 steps the teacher's shifted
schedule). Z-Image Turbo runs with random weights (no download; ``zimage_turbo.CONFIG``):
timings of the denoiser do not depend on the weights. Caption features are random (no text
encoder on the GPU machine).

    python benchmarks/device_check.py --out $OUT/device_check.json     # on a GPU
    .venv/bin/python benchmarks/device_check.py --tiny                 # CPU dry run, ~15 s

``--tiny`` runs every path at toy sizes (and a scaled-down Z-Image, ``tiny_config()``): on a
CPU it checks that the script runs, its numbers mean nothing. Without a GPU only ``--tiny``
runs. Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine, print_machine, print_ratio
from zimage_turbo import CAPTION_TOKENS, CONFIG, VAE_SCALE, random_pipeline, tiny_config

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the pipeline package without an install (a bare GPU machine)
    sys.path.insert(1, str(ROOT))

DEV = "cuda" if torch.cuda.is_available() else "cpu"
STUDENT_SIGMAS = [1.0, 0.75, 0.0]


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


@torch.inference_mode()
def denoise(model, x, caps, sigmas):
    from pipeline.flow import euler, transformer_velocity

    return euler(lambda x, sigma: transformer_velocity(model, x, sigma, caps), x, sigmas).final


def sampling(model, batch: int, latent: tuple[int, int, int], cap_len: int, repeats: int,
             name: str) -> dict[str, object]:
    from pipeline.schedule import shifted_sigmas

    dtype = next(model.parameters()).dtype
    x = torch.randn(batch, *latent, device=DEV)
    cap_dim = model.config.cap_feat_dim
    caps = [torch.randn(cap_len, cap_dim, device=DEV, dtype=dtype) for _ in range(batch)]
    t8 = timed(lambda: denoise(model, x, caps, shifted_sigmas(8)), repeats)
    t2 = timed(lambda: denoise(model, x, caps, STUDENT_SIGMAS), repeats)
    result = {"batch": batch, "latent": list(latent), "caption_tokens": cap_len,
              "8_step_s": round(t8, 4), "2_step_s": round(t2, 4), "speedup": round(t8 / t2, 3),
              "per_forward_s": round(t8 / 8, 4)}
    print(json.dumps(result), flush=True)
    print_ratio(name, t8 / t2, f"8-step vs 2-step denoising, batch {batch}, latent "
                f"{'x'.join(map(str, latent))}; bound 4x")
    return result


def toy_checks(report: dict[str, object], tiny: bool) -> None:
    """The shipped toy teacher: bf16 autocast training step (fwd + bwd + AdamW), then 8- vs
    2-step sampling of a bf16 copy, both in the teacher's latent."""
    from pipeline.flow import noised, transformer_velocity
    from pipeline.teachers.toy import ToyTeacher

    teacher = ToyTeacher.load(device=DEV)
    latent = teacher.latent_shape(32, 32)
    toy = copy.deepcopy(teacher.model).train().requires_grad_(True)
    opt = torch.optim.AdamW(toy.parameters(), lr=1e-4)
    batch = 4 if tiny else 256
    x0 = torch.randn(batch, *latent, device=DEV)
    caps = [torch.randn(16, toy.config.cap_feat_dim, device=DEV) for _ in range(batch)]

    def train_step():
        sigma = torch.rand(batch, device=DEV)
        eps = torch.randn_like(x0)
        with torch.autocast(DEV, dtype=torch.bfloat16):
            pred_v = transformer_velocity(toy, noised(x0, eps, sigma), sigma, caps)
        loss = torch.nn.functional.mse_loss(pred_v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step_s = timed(train_step, 2 if tiny else 20)
    report["toy_train_step"] = {"batch": batch, "latent": list(latent),
                                "step_s": round(step_s, 4),
                                "images_per_s": round(batch / step_s),
                                "loss_finite": bool(torch.isfinite(train_step()).item()),
                                "params_m": round(sum(p.numel() for p in toy.parameters()) / 1e6,
                                                  2)}
    print(json.dumps(report["toy_train_step"]), flush=True)
    toy_bf16 = toy.to(torch.bfloat16).eval()
    report["toy_sampling"] = sampling(toy_bf16, 4 if tiny else 256, latent, 16,
                                      2 if tiny else 10, "toy_8_vs_2_step")


def zimage_checks(report: dict[str, object], tiny: bool) -> None:
    """Z-Image-Turbo-sized transformer, bf16, random weights: 2-step vs 8-step at 1024 px
    (latent 16x128x128 = 4096 image tokens) and 512 px; then the memory of one bf16 fwd+bwd
    (gradient checkpointing, no optimizer): the per-student figure behind the FSDP2 plan."""
    from diffusers import ZImageTransformer2DModel

    config = tiny_config() if tiny else CONFIG
    channels = config["in_channels"]
    start = time.perf_counter()
    with torch.device(DEV):
        big = ZImageTransformer2DModel(**config).to(torch.bfloat16).eval()
    report["zimage_config"] = "tiny_config()" if tiny else "CONFIG (Z-Image Turbo)"
    report["zimage_params_b"] = round(sum(p.numel() for p in big.parameters()) / 1e9, 3)
    report["zimage_init_s"] = round(time.perf_counter() - start, 1)
    if DEV == "cuda":
        report["zimage_weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    cap_len = 16 if tiny else CAPTION_TOKENS
    settings = ((1, 128),) if tiny else ((1, 1024), (4, 1024), (1, 512))
    results = []
    for batch, px in settings:
        side = px // VAE_SCALE
        results.append(sampling(big, batch, (channels, side, side), cap_len, 2 if tiny else 3,
                                f"zimage_8_vs_2_step_{px}px_batch_{batch}"))
    report["zimage_sampling"] = results

    big.train()
    big.enable_gradient_checkpointing()
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    side = (128 if tiny else 1024) // VAE_SCALE
    x = torch.randn(1, channels, 1, side, side, device=DEV, dtype=torch.bfloat16)
    caps = [torch.randn(cap_len, config["cap_feat_dim"], device=DEV, dtype=torch.bfloat16)]
    t = torch.full((1,), 0.5, device=DEV, dtype=torch.bfloat16)

    def fwd_bwd():
        out = big(list(x), t, caps, return_dict=False)[0]
        torch.stack(out).float().pow(2).mean().backward()
        big.zero_grad(set_to_none=False)

    report["zimage_fwd_bwd_s"] = round(timed(fwd_bwd, 1 if tiny else 2), 3)
    if DEV == "cuda":
        report["zimage_fwd_bwd_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("zimage_")
                      and k != "zimage_sampling"}), flush=True)


def pipeline_checks(report: dict[str, object], tiny: bool) -> None:
    """End to end at Z-Image Turbo's sizes (random weights, bf16 on the GPU): the stock
    8-step ``ZImagePipeline`` (its own scheduler, no guidance) against the export's 2-step
    ``TwoStepPipeline`` over a student built from that transformer (two copies: the
    decoupled student), batch 1 and 4 at 1024 px."""
    from pipeline.export.folder import build_pipeline
    from pipeline.student.model import TwoStepStudent
    from pipeline.teachers.base import PipelineComponents

    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    stock = random_pipeline(tiny, DEV, dtype)
    student = TwoStepStudent.from_teacher(stock.transformer, "decoupled", 0.75, dtype=dtype)
    px = 64 if tiny else 1024
    two = build_pipeline(student.eval(), PipelineComponents(
        stock.text_encoder, stock.tokenizer, stock.vae, "qwen3"), px, px).to(DEV)
    two.set_progress_bar_config(disable=True)
    results = []
    for batch in ((1,) if tiny else (1, 4)):
        prompts = ["a big red circle on the left"] * batch

        def run_stock(prompts=prompts):
            stock(list(prompts), height=px, width=px, num_inference_steps=8,
                  guidance_scale=0.0, output_type="pt")

        def run_two(prompts=prompts):
            two(list(prompts), height=px, width=px, output_type="pt")

        with torch.inference_mode():
            t8, t2 = timed(run_stock, 1 if tiny else 3), timed(run_two, 1 if tiny else 3)
        row = {"batch": batch, "px": px, "stock_8_step_s_per_image": round(t8 / batch, 4),
               "exported_2_step_s_per_image": round(t2 / batch, 4),
               "speedup": round(t8 / t2, 2)}
        print_ratio(f"pipeline_8_vs_2_step_{px}px_batch_{batch}", row["speedup"],
                    "stock ZImagePipeline 8 steps / TwoStepPipeline 2 steps, prompt to image; "
                    "bound 4x")
        results.append(row)
    if DEV == "cuda":
        report["pipeline_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["pipeline_end_to_end"] = results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="toy sizes and a scaled-down Z-Image (a CPU dry run)")
    parser.add_argument("--skip-zimage", action="store_true",
                        help="only the toy teacher's checks")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    args = parser.parse_args()
    if DEV != "cuda" and not args.tiny:
        parser.error("no GPU here: the full check needs CUDA; --tiny is the CPU dry run")
    if DEV == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    machine = describe_machine(DEV)
    print_machine(machine)
    report: dict[str, object] = {"device": DEV, "machine": machine, "tiny": args.tiny}
    try:
        toy_checks(report, args.tiny)
        if DEV == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_zimage:
            zimage_checks(report, args.tiny)
            if DEV == "cuda":
                torch.cuda.empty_cache()
            pipeline_checks(report, args.tiny)
        ratios = {"toy_8_vs_2_step": report["toy_sampling"]["speedup"]}  # type: ignore[index]
        for r in report.get("zimage_sampling", []):  # type: ignore[union-attr]
            px = r["latent"][1] * VAE_SCALE
            ratios[f"zimage_8_vs_2_step_{px}px_batch_{r['batch']}"] = r["speedup"]
        for r in report.get("pipeline_end_to_end", []):  # type: ignore[union-attr]
            ratios[f"pipeline_8_vs_2_step_{r['px']}px_batch_{r['batch']}"] = r["speedup"]
        report["ratios"] = ratios
    finally:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            print("wrote", args.out)


if __name__ == "__main__":
    main()
