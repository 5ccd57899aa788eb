"""What each parameterization costs on the toy preset: seconds per training step and peak
memory of the real training loop (``pipeline.student.train.Worker``, one worker, the toy
preset's batch), for phase 1 and phase 2, each in a fresh process on the cached teacher
shards of a workspace (``distill run --config toy`` made them).

    .venv/bin/python research/toy_parameterization_cost.py --workspace runs/toy \
        --out research/results/toy_parameterization_cost.json
    .venv/bin/python research/toy_parameterization_cost.py --workspace runs/toy --steps 2  # tiny

Peak memory is the process's peak resident set above its baseline after imports (CPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARAMETERIZATIONS = ("decoupled", "shared", "decoupled_lora")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _run(workspace: str, phase: int, parameterization: str, steps: int, queue) -> None:
    import torch

    from pipeline.config import load_config
    from pipeline.samples.reader import TeacherSampleReader  # noqa: F401 - import before baseline
    from pipeline.stage import latest_result
    from pipeline.store import ArtifactStore
    from pipeline.student.train import TrainJob, Worker
    from schemas.manifest import TeacherSamplesManifest

    torch.set_num_threads(2)
    torch.manual_seed(0)
    variant = [f"train_init.parameterization={parameterization}", "train_init.lora.rank=32",
               "train_init.lora.alpha=32"]
    cfg = load_config("toy", variant, workspace=workspace)
    store = ArtifactStore(cfg.workspace)
    samples, stage_dir = latest_result(store, "sample_teacher", TeacherSamplesManifest)
    section = (cfg.train_init if phase == 1 else cfg.train_e2e).model_copy(
        update={"steps": steps + 1, "log_every": 10**6, "sample_every": 10**6,
                "checkpoint_every": 10**6})
    with tempfile.TemporaryDirectory() as out:
        job = TrainJob(
            phase=phase, config=section, teacher=cfg.teacher, store_root=store.root_uri,
            samples_dir=stage_dir, train_shards=samples.splits["train"].shards,
            eval_shards=samples.splits["eval"].shards, sigma_mid=samples.teacher.sigma_mid,
            parameterization=parameterization,
            lora=cfg.train_init.lora if parameterization == "decoupled_lora" else None,
            out_dir=out)
        baseline = _rss_kib("VmRSS")
        worker = Worker(job, 0, 1)
        step_fn = worker.phase1_step if phase == 1 else worker.phase2_step
        batches = worker._batches(0)
        step_fn(0, next(batches))  # warm-up
        batch = [next(batches) for _ in range(steps)]
        start = time.perf_counter()
        for i, b in enumerate(batch, start=1):
            step_fn(i, b)
        seconds = (time.perf_counter() - start) / steps
        trainable = sum(p.numel() for p in worker.trainable.values())
    queue.put({"phase": phase, "parameterization": parameterization,
               "seconds_per_step": round(seconds, 3), "batch": section.batch_size,
               "trainable_params": trainable,
               "peak_rss_gib": round((_rss_kib("VmHWM") - baseline) / 2**20, 3)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="runs/toy")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from machine import describe_machine, print_machine

    info = describe_machine("cpu")
    print_machine(info)
    rows = []
    context = multiprocessing.get_context("spawn")
    for phase in (1, 2):
        for parameterization in PARAMETERIZATIONS:
            queue = context.Queue()
            proc = context.Process(target=_run, args=(args.workspace, phase, parameterization,
                                                      args.steps, queue))
            proc.start()
            rows.append(queue.get(timeout=3600))
            proc.join()
            print(rows[-1], flush=True)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
