"""What FD to the teacher measures on the toy: paired samples, not distributions.

`evaluate` scores the student's 2-step images against the teacher's 8-step images of the
same eval prompts *and the same noise* (the teacher samples' eval split). This script asks how
far apart two sample sets of the teacher itself are when only the noise differs, and how the
student reads on noise it was never compared on:

- ``teacher_8 resampled``: the teacher at 8 steps on fresh noise, scored against the stored
  teacher samples (same prompts): the FD of a perfect copy of the teacher's distribution that
  maps noise to images differently (the distribution-level floor at this sample size);
- ``teacher_8 recomputed``: the teacher on the eval noise again, on this machine (a check
  that the stored samples are what the teacher makes here);
- ``student paired``: the student on the eval noise (what `evaluate` reports; a cross-check);
- ``student paired, fresh noise``: the student against the teacher, both on the same fresh
  noise (is the paired FD a property of the student or of one noise draw?);
- ``student unpaired``: the student on fresh noise against the stored teacher samples: to be
  read beside ``teacher_8 resampled``;
- ``teacher_2 unpaired``: the naive 2-step teacher likewise.

Each row also carries ``fd_teacher_unpaired`` (evaluate's distribution measure: FD to the
reference's images of the same prompts from their other seed); on the fresh-noise rows scored
against ``teacher_8 fresh`` it is that measure on another noise draw, the teacher's own value
being its floor: how far the measure moves from draw to draw.

    .venv/bin/python research/toy_fd_floor.py --workspace runs/toy --evaluate KEY [KEY ...] \
        --draws 2 --out research/results/toy_fd_floor.json

``KEY``: an `evaluate` stage folder name (default: the workspace's latest); its student
(`evaluate.weights`, EMA by default) and its teacher samples are used. About 45 s per key and
draw on a 2-core CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

from evaluations import eval_batch, input_key, main_over_evaluations, stage_manifest

KEPT = ("size", "color", "shape", "mean_accuracy", "valid_rate", "fd_teacher", "fd_teacher_inf",
        "fd_teacher_unpaired", "fd_data")


def measure(workspace: Path, evaluate_key: str, args, batch_size: int = 128) -> dict:
    import torch

    from pipeline.evaluation.generation import generate_images
    from pipeline.evaluation.scoring import score_generators
    from pipeline.student.load import load_student
    from schemas.config import RealMetricsConfig
    from schemas.manifest import StudentCheckpointManifest

    evaluation = stage_manifest(workspace, "evaluate", evaluate_key)
    e2e_key = input_key(evaluation, "train_e2e")
    e2e = StudentCheckpointManifest.model_validate(stage_manifest(workspace, "train_e2e",
                                                                  e2e_key))
    samples, teacher, batch = eval_batch(workspace, evaluation)
    caps, metas = batch["caption"], batch["meta"]
    student = load_student(workspace / "train_e2e" / e2e_key, e2e, teacher,
                           evaluation["config"]["weights"])

    def images(sampler, noise):
        return generate_images(sampler, teacher, caps, noise, batch_size)

    def student_sampler(c, n):
        return student.sample(n.to(teacher.device), c)

    def teacher_sampler(steps):
        return lambda c, n: teacher.sample(c, n, steps).final

    def score(imgs: dict, reference: str) -> dict:
        metrics = score_generators(imgs, reference, batch["prompt"], [m["seed"] for m in metas],
                                   [hash(m["prompt_id"]) for m in metas], toy=True,
                                   real_metrics=RealMetricsConfig(), log=logging.getLogger())
        return {name: {k: v for k, v in m.items() if k in KEPT} for name, m in metrics.items()}

    stored = {"teacher_8": images(lambda c, n: n, batch["x0"]),
              "teacher_8 recomputed": images(teacher_sampler(samples.teacher.steps),
                                             batch["noise"]),
              "student paired": images(student_sampler, batch["noise"])}
    rows = {"eval noise": score(stored, "teacher_8")}
    for draw in range(1, args.draws + 1):
        fresh = torch.randn(batch["noise"].shape, generator=torch.Generator().manual_seed(
            10_000 + draw))
        teacher_fresh = images(teacher_sampler(samples.teacher.steps), fresh)
        student_fresh = images(student_sampler, fresh)
        unpaired_naive = images(teacher_sampler(2), fresh)
        unpaired = score({"teacher_8": stored["teacher_8"], "teacher_8 resampled": teacher_fresh,
                          "student unpaired": student_fresh,
                          "teacher_2 unpaired": unpaired_naive}, "teacher_8")
        # Scored as evaluate scores: against the teacher on this draw's noise, so that each
        # generator's fd_teacher_unpaired (and the teacher's own floor) is read on this draw.
        paired = score({"teacher_8 fresh": teacher_fresh,
                        "student paired, fresh noise": student_fresh,
                        "teacher_2 paired, fresh noise": unpaired_naive}, "teacher_8 fresh")
        rows[f"fresh noise {draw}"] = {**unpaired, **paired}
    return {"evaluate": evaluate_key, "train_e2e": e2e_key, "samples": len(caps),
            "stored_student_fd_teacher": evaluation["metrics"].get("student.fd_teacher"),
            "rows": rows}


def show(key: str, result: dict) -> None:
    print(f"evaluate {key} (student FD stored {result['stored_student_fd_teacher']}), "
          f"{result['seconds']} s", flush=True)
    for row, gens in result["rows"].items():
        for name, m in gens.items():
            print(f"  {row:14s} {name:30s} FD {m['fd_teacher']:7.2f}  unpaired "
                  f"{m.get('fd_teacher_unpaired', float('nan')):6.2f}  shape "
                  f"{m['shape']:.3f}  valid {m['valid_rate']:.3f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main_over_evaluations(
        __doc__.splitlines()[0], measure, show,
        lambda parser: parser.add_argument("--draws", type=int, default=2,
                                           help="fresh noise draws")))
