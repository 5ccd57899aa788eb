"""Where the student's FD to the teacher comes from: the mean against the covariance terms.

`evaluate`'s FD to the teacher (pipeline/evaluation/metrics.py:frechet_distance) is
``|mu_s - mu_t|^2 + tr(S_s) + tr(S_t) - 2 tr((S_t^1/2 S_s S_t^1/2)^1/2)``. This script
regenerates the evaluated generators' eval images exactly as `evaluate` does (the same noise,
prompts and weights), extracts the shipped feature network's features and splits the FD into

- ``mean``: ``|mu_s - mu_t|^2``, a systematic shift of the features (a colour or size bias);
- ``cov``: the covariance term, itself read as ``tr(S_s) - tr(S_t)`` (less spread than the
  teacher: a smoother, less varied student; more: noisier) and the rest, the mismatch of the
  covariances' shapes.

It also reports the paired feature error ``mean_i |f_s,i - f_t,i|^2`` (the student's image
against the teacher's from the same noise). The FD can not exceed it (up to the covariance's
N - 1 normalization): FD is the squared 2-Wasserstein distance between Gaussians fit to the two
feature sets, and the pairing is one coupling of them. A student that copies the teacher image
for image drives both to 0; one that matches the distribution only, only the FD.

    .venv/bin/python research/toy_fd_terms.py --workspace runs/toy --evaluate KEY [KEY ...] \
        --out research/results/toy_fd_terms.json

About 30 s per key on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

from evaluations import eval_batch, input_key, main_over_evaluations, stage_manifest


def fd_terms(a, b) -> dict[str, float]:
    """The terms of ``frechet_distance(a, b)`` for features ``a`` (generator) and ``b``
    (reference), both ``(N, D)`` with row ``i`` of each from the same noise."""
    import torch

    from pipeline.evaluation.metrics import frechet_distance

    a, b = a.double(), b.double()
    mean = float((a.mean(0) - b.mean(0)).pow(2).sum())
    total = frechet_distance(a, b)
    trace_a, trace_b = float(torch.cov(a.T).trace()), float(torch.cov(b.T).trace())
    return {"fd": round(total, 4), "mean": round(mean, 4), "cov": round(total - mean, 4),
            "trace_generator": round(trace_a, 4), "trace_teacher": round(trace_b, 4),
            "trace_difference": round(trace_a - trace_b, 4),
            "paired_squared_error": round(float((a - b).pow(2).sum(1).mean()), 4)}


def generator_features(workspace: Path, evaluate_key: str, batch_size: int = 128):
    """The shipped feature network's features of the teacher's stored eval images and of each
    generator that ``evaluate_key`` scored (``teacher_2``, ``student_phase1``, ``student``),
    regenerated as `evaluate` makes them: ``(teacher (N, D), {name: (N, D)}, evaluation)``,
    row ``i`` of each from the same noise."""
    from pipeline.evaluation.generation import generate_images
    from pipeline.evaluation.toy import ToyScorer
    from pipeline.student.load import load_student
    from schemas.manifest import StudentCheckpointManifest

    evaluation = stage_manifest(workspace, "evaluate", evaluate_key)
    _, teacher, batch = eval_batch(workspace, evaluation)
    caps, noise = batch["caption"], batch["noise"]
    scorer = ToyScorer()
    teacher_feats = scorer.features(generate_images(lambda c, n: n, teacher, caps, batch["x0"],
                                                    batch_size))
    naive = generate_images(lambda c, n: teacher.sample(c, n, 2).final, teacher, caps, noise,
                            batch_size)
    feats = {"teacher_2": scorer.features(naive)}
    for stage in ("train_init", "train_e2e"):
        key = input_key(evaluation, stage)
        manifest = StudentCheckpointManifest.model_validate(stage_manifest(workspace, stage, key))
        student = load_student(workspace / stage / key, manifest, teacher,
                               evaluation["config"]["weights"])
        images = generate_images(lambda c, n, s=student: s.sample(n.to(teacher.device), c),
                                 teacher, caps, noise, batch_size)
        feats["student_phase1" if stage == "train_init" else "student"] = scorer.features(images)
    return teacher_feats, feats, evaluation


def measure(workspace: Path, evaluate_key: str, args=None) -> dict:
    teacher_feats, feats, evaluation = generator_features(workspace, evaluate_key)
    rows = {name: fd_terms(f, teacher_feats) for name, f in feats.items()}
    return {"evaluate": evaluate_key, "train_e2e": input_key(evaluation, "train_e2e"),
            "samples": len(teacher_feats),
            "stored": {name: evaluation["metrics"].get(f"{name}.fd_teacher") for name in rows},
            "rows": rows}


def show(key: str, result: dict) -> None:
    print(f"evaluate {key}, {result['seconds']} s", flush=True)
    for name, terms in result["rows"].items():
        print(f"  {name:15s} " + "  ".join(f"{k} {v:.3f}" for k, v in terms.items())
              + f"  (stored FD {result['stored'][name]})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main_over_evaluations(__doc__.splitlines()[0], measure, show))
