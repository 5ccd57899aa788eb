"""FD to the teacher along phase 2: where on its trajectory is the student best?

Runs `train_e2e` on the toy preset (plus `--set` overrides; phase 1 and the teacher samples
must be cached) with a checkpoint every `--every` steps, copies the EMA weights of each
checkpoint as it appears (the loop keeps only the newest), and scores each copy, the finished
stage's EMA, and uniform averages of the last 2-5 of them (a longer average than the EMA's
own), on the eval split with evaluate's own code: every attribute, valid rate and FD to the
teacher's 8-step samples. With a constant learning rate after the warm-up, the student at
step `k` of an `N`-step phase 2 is the student of a `k`-step phase 2 (the same draws, the
same adversarial ramp), so one run gives every shorter phase-2 length.

    .venv/bin/python research/toy_phase2_trajectory.py --workspace runs/demo-timing \
        --set teacher.dtype=float32 --set train_e2e.steps=300 --out /tmp/trajectory.json
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_with_snapshots(workspace: Path, overrides: list[str], every: int,
                         snapshots: Path) -> None:
    """Phase 2 (forced, so a cached result is recomputed; it is replaced only on success),
    copying ``checkpoints/step-N/ema.safetensors`` of the running stage as each appears."""
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", "toy", "--workspace",
           str(workspace), "--only", "train_e2e", "--force",
           "--set", f"train_e2e.checkpoint_every={every}"]
    for item in overrides:
        cmd += ["--set", item]
    log = (snapshots / "train.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    start = time.time()
    while True:
        for ckpt in (workspace / "train_e2e").glob("*/checkpoints/step-*"):
            if not re.fullmatch(r"step-\d+", ckpt.name):  # a checkpoint still being written
                continue
            target = snapshots / ckpt.name / "ema.safetensors"
            if ckpt.stat().st_mtime >= start and not target.exists():
                target.parent.mkdir(exist_ok=True)
                try:
                    shutil.copy(ckpt / "ema.safetensors", target)
                except FileNotFoundError:  # pruned between glob and copy
                    target.parent.rmdir()
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"train_e2e failed (rc {proc.returncode}); see {log.name}")


def score(workspace: Path, snapshots: Path, max_samples: int,
          tail_averages: tuple[int, ...] = (2, 3, 4, 5)) -> dict[str, dict]:
    from itertools import islice

    from safetensors.torch import load_file, save_file

    from pipeline.evaluation.generation import generate_images
    from pipeline.evaluation.scoring import score_generators
    from pipeline.samples.reader import TeacherSampleReader, collate_samples
    from pipeline.store import ArtifactStore
    from pipeline.student.load import load_student
    from pipeline.teachers import load_teacher
    from schemas.config import RealMetricsConfig
    from schemas.manifest import StudentCheckpointManifest, TeacherSamplesManifest

    def manifest_of(stage: str, key: str) -> tuple[Path, dict]:
        folder = workspace / stage / key
        return folder, json.loads((folder / "manifest.json").read_text())

    e2e_dir, e2e_raw = manifest_of("train_e2e", json.loads(
        (workspace / "train_e2e" / "latest.json").read_text())["key"])
    # the teacher samples this phase 2 trained on (their eval split is what evaluate scores)
    samples_dir, samples_raw = manifest_of("sample_teacher", next(
        i["key"] for i in e2e_raw["inputs"] if i["stage"] == "sample_teacher"))
    samples = TeacherSamplesManifest.model_validate(samples_raw)
    e2e = StudentCheckpointManifest.model_validate(e2e_raw)
    teacher = load_teacher("toy", None, device="cpu")
    reader = TeacherSampleReader.from_manifest(ArtifactStore(str(workspace)), samples, "eval")
    batch = collate_samples(list(islice(reader, max_samples)))
    images = {"teacher_8": generate_images(lambda c, n: n, teacher, batch["caption"],
                                           batch["x0"], 128)}
    # each snapshot is a folder holding ema.safetensors, loaded as evaluate loads a stage's
    final = snapshots / f"step-{e2e.steps:07d}"
    final.mkdir()
    shutil.copy(e2e_dir / "ema.safetensors", final / "ema.safetensors")
    steps = sorted(snapshots.glob("step-*"))
    # uniform averages of the last m EMA snapshots (a longer average than the EMA's own)
    for m in tail_averages:
        if m <= len(steps):
            tensors = [load_file(str(p / "ema.safetensors")) for p in steps[-m:]]
            averaged = {k: sum(t[k] for t in tensors) / m for k in tensors[0]}
            (snapshots / f"tail-{m}").mkdir()
            save_file(averaged, str(snapshots / f"tail-{m}" / "ema.safetensors"))
    for folder in [*steps, *sorted(snapshots.glob("tail-*"))]:
        student = load_student(folder, e2e, teacher, "ema")
        images[folder.name] = generate_images(
            lambda c, n, s=student: s.sample(n.to(teacher.device), c), teacher,
            batch["caption"], batch["noise"], 128)
    metas = batch["meta"]
    metrics = score_generators(images, "teacher_8", batch["prompt"],
                               [m["seed"] for m in metas],
                               [hash(m["prompt_id"]) for m in metas], toy=True,
                               real_metrics=RealMetricsConfig(), log=logging.getLogger())
    return {"train_e2e": e2e.key, "samples": samples_dir.name, "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("runs/toy"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--max-samples", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        snapshots = Path(tmp)
        train_with_snapshots(workspace, args.overrides, args.every, snapshots)
        result = {"overrides": args.overrides, **score(workspace, snapshots,
                                                       args.max_samples)}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[" ".join(args.overrides) or "preset"] = result
    args.out.write_text(json.dumps(results, indent=2))
    for name, m in result["metrics"].items():
        print(f"{name}: FD {m['fd_teacher']:.3f}, shape {m['shape']:.3f}, "
              f"valid {m['valid_rate']:.3f}")


if __name__ == "__main__":
    main()
