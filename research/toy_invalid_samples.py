"""Which of a student's samples are invalid (not one crisp shape of pure colour), and do they
come from prompts that leave the colour (or another attribute) open?

A student trained by regression to the teacher's image from the same noise can hedge where
the teacher's choice is hard to predict from the noise: a prompt without a colour word lets
the teacher pick any colour, and a student that is unsure paints a mix (mode averaging). This
script samples the eval split with the student (EMA weights) and with the 8-step teacher's
stored images, scores each image's palette purity with evaluate's code
(:func:`pipeline.toy.metrics.palette_purity`, valid at >= 0.9), and counts the invalid ones by
which attributes their prompt names.

    .venv/bin/python research/toy_invalid_samples.py --workspace runs/toy \\
        --stage train_e2e/8fbb485089095f40 train_e2e/e70ae1c052d30e6d \\
        --out research/results/toy_invalid_samples.json
"""

from __future__ import annotations

import argparse
import json
import re
from itertools import islice
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="runs/toy")
    parser.add_argument("--stage", required=True, nargs="+",
                        help="train_e2e/<key>: the student(s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pipeline.evaluation.toy import VALID_PURITY
    from pipeline.samples.reader import TeacherSampleReader, collate_samples
    from pipeline.store import ArtifactStore
    from pipeline.student.load import load_student
    from pipeline.teachers import load_teacher
    from pipeline.toy.metrics import palette_purity
    from pipeline.toy.prompts import parse_prompt
    from schemas.manifest import StudentCheckpointManifest, TeacherSamplesManifest

    torch.set_num_threads(args.threads)
    store = ArtifactStore(args.workspace)
    latest = json.loads((Path(args.workspace) / "sample_teacher" / "latest.json").read_text())
    samples = store.read_manifest(f"sample_teacher/{latest['key']}", TeacherSamplesManifest)
    teacher = load_teacher("toy")
    reader = TeacherSampleReader.from_manifest(store, samples, "eval")
    batch = collate_samples(list(islice(iter(reader), 10**9)))
    images = {"teacher_8": teacher.decode(batch["x0"])}
    for stage in args.stage:
        manifest = store.read_manifest(stage, StudentCheckpointManifest)
        student = load_student(store.local_path(stage), manifest, teacher, "ema")
        with torch.no_grad():
            fake = torch.cat([student.sample(batch["noise"][i:i + 128],
                                             batch["caption"][i:i + 128])
                              for i in range(0, batch["noise"].shape[0], 128)])
        images[stage] = teacher.decode(fake)
    prompts = batch["prompt"]
    names = [parse_prompt(p)[0] for p in prompts]
    fields = ["size", "color", "shape", "position", "background"]

    def large(prompt: str) -> bool:
        return re.search(r"\b(large|big)\b", prompt.lower()) is not None

    def names_it(attrs, field: str) -> bool:
        return getattr(attrs, field, None) is not None

    report: dict = {"stages": args.stage, "samples": len(prompts),
                    "prompts_naming": {f: sum(names_it(a, f) for a in names) for f in fields},
                    "prompts_large": sum(map(large, prompts)),
                    "generators": {}}
    for gen, imgs in images.items():
        purity = palette_purity(imgs)
        invalid = [i for i in range(len(prompts)) if purity[i] < VALID_PURITY]
        report["generators"][gen] = {
            "invalid": len(invalid),
            "invalid_whose_prompt_names": {f: sum(names_it(names[i], f) for i in invalid)
                                           for f in fields},
            "invalid_large": sum(large(prompts[i]) for i in invalid),
            "invalid_purity_under_0.8": sum(purity[i].item() < 0.8 for i in invalid),
            "invalid_prompts": [[i, prompts[i], round(purity[i].item(), 3)] for i in invalid]}
    for gen, r in report["generators"].items():
        print(f"{gen}: {r['invalid']} invalid of {len(prompts)} ({r['invalid_purity_under_0.8']} "
              f"under purity 0.8, {r['invalid_large']} large or big of "
              f"{report['prompts_large']} such prompts); their prompts name "
              f"{r['invalid_whose_prompt_names']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
