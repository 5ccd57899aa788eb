"""Teacher sampling throughput: the ``sample_teacher`` stage versus a naive loop, 1 versus 2
Ray actors, and the shard reader versus what training consumes. All in one run, one machine,
on the shipped toy teacher (its 8x8x8 latent, decoded to 32x32 images).

- naive (the baseline): ``ZImagePipeline.__call__`` one prompt at a time on the same toy
  teacher (the stock diffusers loop; :func:`pipeline.teachers.toy.toy_zimage_pipeline`), each
  image decoded and written as a PNG: what one would write without this stage (wall time
  includes loading the teacher and the text encoder, as the stage's does);
- stage: ``sample_teacher`` through the cached stage runner on a local Ray instance, with the
  default actor pool (``num_actors``/``cpus_per_actor`` auto, planned from the cluster) and
  each hand-picked split (1 actor with all cores as torch threads, 2 actors with half each),
  in float32 like the naive loop, and with ``teacher.dtype=bfloat16`` (bf16 autocast: a
  precision change, reported separately; on a CPU without AVX512-BF16 it is slower); wall time
  includes actor start and teacher loading, "steady" counts shard time only;
- reader: :class:`TeacherSampleReader` decoding every train sample to tensors, against one
  fwd+bwd+AdamW step of the teacher's transformer per sample (a bound above what the phase-2
  trainer consumes: it runs two such generators plus a discriminator per sample).

    .venv/bin/python benchmarks/sample_teacher.py --out benchmarks/results/sample_teacher.json
    .venv/bin/python benchmarks/sample_teacher.py --tiny   # 64 samples, auto and 1 actor, 4 naive

Targets: stage >= 3x naive; auto >= the best hand-picked split; reader >= 10x the trainer.
Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from machine import describe_machine, print_machine, print_ratio

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def naive_loop(prompts: list[str], seeds: list[int], out: Path) -> float:
    from PIL import Image

    from pipeline.generate import noise_for_seeds, to_uint8
    from pipeline.teachers import load_teacher
    from pipeline.teachers.toy import toy_zimage_pipeline

    start = time.perf_counter()
    teacher = load_teacher("toy")
    pipe = toy_zimage_pipeline(teacher)
    pipe.set_progress_bar_config(disable=True)
    shape = teacher.latent_shape(32, 32)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        caption = teacher.encode_prompts([prompt])
        latents = noise_for_seeds([seed], shape)
        side = 8 * shape[1]  # the pipeline's latent is H / 8 (whatever the teacher's space)
        x0 = pipe(prompt_embeds=caption, height=side, width=side, num_inference_steps=8,
                  guidance_scale=0.0, latents=latents, output_type="latent").images
        Image.fromarray(to_uint8(teacher.decode(x0))[0]).save(out / f"{i:05d}.png")
    return len(prompts) / (time.perf_counter() - start)


def stage_run(workspace: Path, samples: int, actors: int | str, cpus: int | str,
              dtype: str = "float32") -> dict[str, float]:
    from pipeline.config import load_config
    from pipeline.stage import run_stage
    from pipeline.store import ArtifactStore
    from stages import curate, sample_teacher

    overrides = [f"curate.sources=[{{kind: toy, num_prompts: {samples * 3}, seed: 11}}]",
                 "curate.eval_fraction=0.0", f"sample_teacher.max_train_prompts={samples}",
                 "sample_teacher.samples_per_shard=256", "sample_teacher.batch_size=64",
                 f"sample_teacher.num_actors={actors}", f"sample_teacher.cpus_per_actor={cpus}",
                 f"teacher.dtype={dtype}"]
    cfg = load_config("smoke", overrides, workspace=str(workspace))
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest
    start = time.perf_counter()
    outcome = run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})
    wall = time.perf_counter() - start
    m = outcome.manifest
    n = m.counts["samples_written"]
    return {"samples": n, "wall_s": round(wall, 2),
            "images_per_s": round(n / wall, 2),
            "steady_images_per_s": m.metrics["steady_samples_per_s"],
            "bytes_per_sample": m.metrics["bytes_per_sample"],
            "_store": store, "_manifest": m}


def reader_rate(store, manifest) -> float:
    from pipeline.samples.reader import TeacherSampleReader

    reader = TeacherSampleReader.from_manifest(store, manifest, "train", shuffle_buffer=256)
    start = time.perf_counter()
    n = sum(1 for _ in reader)
    return n / (time.perf_counter() - start)


def trainer_bound(batch: int = 32, steps: int = 5) -> float:
    """Samples/s of one fwd+bwd+AdamW step of the teacher transformer (real caption lengths,
    the teacher's latent shape)."""
    import copy

    from pipeline.flow import transformer_velocity
    from pipeline.teachers import load_teacher
    from pipeline.toy.prompts import generate_prompts

    teacher = load_teacher("toy")
    model = copy.deepcopy(teacher.model).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    caps = teacher.encode_prompts([p.text for p in generate_prompts(batch, seed=3)])
    x, sigma = torch.randn(batch, *teacher.latent_shape(32, 32)), torch.rand(batch)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = transformer_velocity(model, x, sigma, caps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / (sum(times[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="Samples per stage run.")
    parser.add_argument("--naive", type=int, default=64, help="Images of the naive loop.")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2],
                        help="Hand-picked stage runs in float32: these actor counts, the CPUs "
                        "split evenly (compared with the default, auto).")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="Also a stage run with teacher.dtype=bfloat16 (auto actors).")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                        help="CPUs of the local Ray instance (split among the actors).")
    parser.add_argument("--trainer-steps", type=int, default=5)
    parser.add_argument("--tiny", action="store_true",
                        help="--samples 64 --naive 4 --actors 1 --no-bf16 --trainer-steps 2")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    args = parser.parse_args()
    if args.tiny:
        args.samples, args.naive, args.actors, args.bf16 = 64, 4, [1], False
        args.trainer_steps = 2
    import ray

    from pipeline.toy.prompts import generate_prompts

    machine = describe_machine("cpu")
    print_machine(machine)
    report: dict[str, object] = {"machine": machine, "ray_cpus": args.cpus}
    # (name, num_actors, cpus_per_actor, dtype): the default (auto) and each hand-picked split
    # Hand-picked first, auto after them (the first run pays the warm-up). Auto runs twice in
    # a fresh cache: first as on a machine that never ran the stage (it calibrates), then
    # with the calibrated split.
    plan: list[tuple[str, int | str, int | str, str]] = [
        (f"stage_{a}_actor", a, max(1, args.cpus // a), "float32") for a in args.actors]
    plan += [("stage_auto_calibrating", "auto", "auto", "float32"),
             ("stage_auto", "auto", "auto", "float32")]
    if args.bf16:
        plan.append(("stage_auto_bfloat16", "auto", "auto", "bfloat16"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        prompts = [p.text for p in generate_prompts(args.naive, seed=11)]
        out = Path(tmp) / "naive"
        out.mkdir()
        naive = naive_loop(prompts, list(range(len(prompts))), out)
        report["naive_zimage_pipeline"] = {"images": len(prompts),
                                           "images_per_s": round(naive, 2)}
        print("naive ZImagePipeline loop:", report["naive_zimage_pipeline"], flush=True)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
        try:
            runs = {}
            for name, actors, cpus, dtype in plan:
                run = stage_run(Path(tmp) / name, args.samples, actors, cpus, dtype)
                runs[name] = run
                report[name] = {"num_actors": actors, "cpus_per_actor": cpus, "dtype": dtype,
                                **{k: v for k, v in run.items() if not k.startswith("_")}}
                print(f"{name}:", report[name], flush=True)
        finally:
            ray.shutdown()
        reader = reader_rate(runs["stage_auto"]["_store"], runs["stage_auto"]["_manifest"])
    trainer = trainer_bound(steps=args.trainer_steps)
    auto = runs["stage_auto"]["images_per_s"]
    picked = {name: runs[name]["images_per_s"] for name, *_ in plan[:len(args.actors)]}
    best = max(picked, key=picked.__getitem__)
    ratios: dict[str, float] = {"stage_vs_naive_same_precision": round(auto / naive, 2),
                                "auto_vs_best_hand_picked": round(auto / picked[best], 2)}
    print_ratio("stage_vs_naive_same_precision", ratios["stage_vs_naive_same_precision"],
                "stage (auto actors), float32 vs naive ZImagePipeline loop; target >= 3x")
    print_ratio("auto_vs_best_hand_picked", ratios["auto_vs_best_hand_picked"],
                f"auto actors (calibrated) vs the best hand-picked split ({best}), images/s; "
                f"target >= 1 within run-to-run noise (a few %)")
    first = runs["stage_auto_calibrating"]["wall_s"] - runs["stage_auto"]["wall_s"]
    report["calibration_s"] = round(first, 1)
    print(f"calibration (first auto run on this machine): {first:.1f} s more wall time")
    if args.bf16:
        bf16 = runs["stage_auto_bfloat16"]["images_per_s"]
        ratios["stage_bf16_autocast_vs_float32"] = round(bf16 / auto, 2)
        print_ratio("stage_bf16_autocast_vs_float32", ratios["stage_bf16_autocast_vs_float32"],
                    "stage, auto actors, bf16 autocast vs float32 (what teacher.dtype auto "
                    "decides from)")
    ratios["reader_vs_trainer"] = round(reader / trainer, 1)
    print_ratio("reader_vs_trainer", ratios["reader_vs_trainer"],
                f"reader {reader:.0f} vs one fwd+bwd+AdamW {trainer:.0f} samples/s; "
                f"target >= 10x")
    report["reader_samples_per_s"] = round(reader, 1)
    report["trainer_bound_samples_per_s"] = round(trainer, 1)
    report["ratios"] = ratios
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
