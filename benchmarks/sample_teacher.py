"""Teacher sampling throughput: the ``sample_teacher`` stage versus a naive loop, 1 versus 2
Ray actors, and the shard reader versus what training consumes. All in one run, one machine.

- naive: ``ZImagePipeline.__call__`` one prompt at a time on the same toy teacher (the stock
  diffusers loop; :func:`pipeline.teachers.toy.toy_zimage_pipeline`), each image written as
  a PNG: what one would write without this stage;
- stage: ``sample_teacher`` through the cached stage runner on a local Ray instance, with 1
  actor (all cores as torch threads) and 2 actors (one core each), in float32 like the naive
  loop, and with ``teacher.dtype=bfloat16`` (bf16 autocast: a precision change, reported
  separately); wall time includes actor start and teacher loading, "steady" counts shard
  time only;
- reader: :class:`TeacherSampleReader` decoding every train sample to tensors, against one
  fwd+bwd+AdamW step of the teacher's transformer per sample (a bound above what the phase-2
  trainer consumes: it runs two such generators plus a discriminator per sample).

    .venv/bin/python benchmarks/sample_teacher.py [--samples 2048] [--naive 64]

Writes ``benchmarks/results/sample_teacher.json``. Target: stage >= 3x naive; reader >= 10x
the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
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
    shape = teacher.latent_shape()
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        caption = teacher.encode_prompts([prompt])
        latents = noise_for_seeds([seed], shape)
        side = 8 * shape[1]  # the pipeline's latent is H / 8
        x0 = pipe(prompt_embeds=caption, height=side, width=side, num_inference_steps=8,
                  guidance_scale=0.0, latents=latents, output_type="latent").images
        Image.fromarray(to_uint8(teacher.decode(x0))[0]).save(out / f"{i:05d}.png")
    return len(prompts) / (time.perf_counter() - start)


def stage_run(workspace: Path, samples: int, actors: int, cpus: int,
              dtype: str = "auto") -> dict[str, float]:
    from pipeline.config import load_config
    from pipeline.stage import run_stage
    from pipeline.store import ArtifactStore
    from stages import curate, sample_teacher

    overrides = [f"curate.sources=[{{kind: toy, num_prompts: {samples * 3}, seed: 11}}]",
                 "curate.eval_fraction=0.0", f"sample_teacher.max_train_prompts={samples}",
                 "sample_teacher.samples_per_shard=256", "sample_teacher.batch_size=64",
                 f"sample_teacher.num_actors={actors}", f"sample_teacher.cpus_per_actor={cpus}",
                 f"sample_teacher.teacher.dtype={dtype}"]
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
    """Samples/s of one fwd+bwd+AdamW step of the teacher transformer (real caption lengths)."""
    import copy

    from pipeline.teachers import load_teacher
    from pipeline.toy.prompts import generate_prompts
    from pipeline.toy.teacher import velocity

    teacher = load_teacher("toy")
    model = copy.deepcopy(teacher.model).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    caps = teacher.encode_prompts([p.text for p in generate_prompts(batch, seed=3)])
    x, sigma = torch.randn(batch, 3, 32, 32), torch.rand(batch)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = velocity(model, x, sigma, caps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / (sum(times[1:]) / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--naive", type=int, default=64)
    args = parser.parse_args()
    import ray

    from pipeline.toy.prompts import generate_prompts

    report: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, "
                                 f"{os.cpu_count()} CPUs", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = [p.text for p in generate_prompts(args.naive, seed=11)]
        out = Path(tmp) / "naive"
        out.mkdir()
        naive = naive_loop(prompts, list(range(len(prompts))), out)
        report["naive_zimage_pipeline"] = {"images": len(prompts),
                                           "images_per_s": round(naive, 2)}
        print("naive ZImagePipeline loop:", report["naive_zimage_pipeline"], flush=True)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        try:
            runs = {}
            for actors, dtype in ((1, "auto"), (2, "auto"), (2, "bfloat16")):
                cpus = max(1, (os.cpu_count() or 2) // actors)
                run = stage_run(Path(tmp) / f"ws{actors}{dtype}", args.samples, actors, cpus,
                                dtype)
                name = f"stage_{actors}_actor" + ("" if dtype == "auto" else f"_{dtype}")
                runs[name] = run
                report[name] = {k: v for k, v in run.items() if not k.startswith("_")}
                print(f"{name}:", report[name], flush=True)
        finally:
            ray.shutdown()
        reader = reader_rate(runs["stage_1_actor"]["_store"], runs["stage_1_actor"]["_manifest"])
    trainer = trainer_bound()
    one, two = runs["stage_1_actor"]["images_per_s"], runs["stage_2_actor"]["images_per_s"]
    report["speedup_vs_naive_same_precision"] = round(max(one, two) / naive, 2)
    report["speedup_vs_naive_bf16_autocast"] = round(
        runs["stage_2_actor_bfloat16"]["images_per_s"] / naive, 2)
    report["speedup_2_vs_1_actor"] = round(two / one, 2)
    report["reader_samples_per_s"] = round(reader, 1)
    report["trainer_bound_samples_per_s"] = round(trainer, 1)
    report["reader_vs_trainer"] = round(reader / trainer, 1)
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=2))
    path = ROOT / "benchmarks" / "results" / "sample_teacher.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
