"""Which of a student's eval samples are invalid (not one crisp shape of pure colour), and what
do their prompts ask for?

This script regenerates an evaluation's student images exactly as `evaluate` does (the same
noise, prompts and weights; :func:`pipeline.evaluation.generation.generate_images`), scores
each image's palette purity with evaluate's code (:func:`pipeline.toy.metrics.palette_purity`,
valid at :data:`pipeline.evaluation.toy.VALID_PURITY`), does the same for the 8-step teacher's
stored samples, and counts the invalid ones by the attributes their prompt names
(:func:`pipeline.toy.prompts.parse_prompt`) and by whether it asks for a large shape.

    .venv/bin/python research/toy_invalid_samples.py --workspace runs/toy \\
        --evaluate KEY [KEY ...] --out research/results/toy_invalid_samples.json

About 25 s per key on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

from evaluations import eval_batch, input_key, main_over_evaluations, stage_manifest

FIELDS = ("size", "color", "shape", "position", "background")


def invalid_samples(images, prompts: list[str], names: list) -> dict:
    """The samples of ``images`` ``(N, 3, H, W)`` under the validity threshold, counted by
    what their prompts (``names``: their parsed attributes) name."""
    from pipeline.evaluation.toy import VALID_PURITY
    from pipeline.toy.metrics import palette_purity

    purity = palette_purity(images)
    invalid = [i for i in range(len(prompts)) if purity[i] < VALID_PURITY]
    return {"invalid": len(invalid),
            "invalid_whose_prompt_names": {f: sum(f in names[i].named() for i in invalid)
                                           for f in FIELDS},
            "invalid_large": sum(names[i].size == "large" for i in invalid),
            "invalid_purity_under_0.8": sum(purity[i].item() < 0.8 for i in invalid),
            "invalid_prompts": [[i, prompts[i], round(purity[i].item(), 3)] for i in invalid]}


def measure(workspace: Path, evaluate_key: str, args=None, batch_size: int = 128) -> dict:
    from pipeline.evaluation.generation import generate_images
    from pipeline.student.load import load_student
    from pipeline.toy.prompts import parse_prompt
    from schemas.manifest import StudentCheckpointManifest

    evaluation = stage_manifest(workspace, "evaluate", evaluate_key)
    _, teacher, batch = eval_batch(workspace, evaluation)
    caps, prompts = batch["caption"], batch["prompt"]
    names = [parse_prompt(p)[0] for p in prompts]
    key = input_key(evaluation, "train_e2e")
    manifest = StudentCheckpointManifest.model_validate(
        stage_manifest(workspace, "train_e2e", key))
    student = load_student(workspace / "train_e2e" / key, manifest, teacher,
                           evaluation["config"]["weights"])
    teacher_images = generate_images(lambda c, n: n, teacher, caps, batch["x0"], batch_size)
    student_images = generate_images(lambda c, n: student.sample(n, c), teacher, caps,
                                     batch["noise"], batch_size)
    return {"evaluate": evaluate_key, "train_e2e": key, "samples": len(prompts),
            "prompts_naming": {f: sum(f in a.named() for a in names) for f in FIELDS},
            "prompts_large": sum(a.size == "large" for a in names),
            "teacher_8": invalid_samples(teacher_images, prompts, names),
            "student": invalid_samples(student_images, prompts, names)}


def show(key: str, result: dict) -> None:
    for gen in ("teacher_8", "student"):
        r = result[gen]
        print(f"evaluate {key} {gen}: {r['invalid']} invalid of {result['samples']} "
              f"({r['invalid_purity_under_0.8']} under purity 0.8, {r['invalid_large']} large of "
              f"{result['prompts_large']} such prompts); their prompts name "
              f"{r['invalid_whose_prompt_names']}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main_over_evaluations(__doc__.splitlines()[0], measure, show))
