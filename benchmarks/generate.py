"""End-to-end generation latency: 2-step student versus the 8-step teacher, same machine, same
run: text encoding, denoising and decoding per image, at batch 1 and a larger batch.

The physical bound on the denoiser is 4x (8 versus 2 transformer calls); text encoding and
decoding are shared, so the whole pipeline gets less. The student's weights do not change its
speed: without ``--student`` a student is built from the teacher's architecture.

The baseline is the 8-step teacher, timed in the same run on the same inputs (median of
``--repeats``, after one warm-up); the toy teacher samples its 8x8x8 latent and decodes it to
32x32 images.

    .venv/bin/python benchmarks/generate.py --out benchmarks/results/generate_toy_cpu.json
    .venv/bin/python benchmarks/generate.py --tiny             # batch 1, 2 repeats, ~10 s
    python benchmarks/generate.py --teacher zimage --teacher-path /models/Z-Image-Turbo \\
        --height 1024 --width 1024 --batches 1 4 --out generate_zimage_cuda.json   # GPU

Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import describe_machine, print_machine, print_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy", choices=["toy", "zimage"])
    parser.add_argument("--teacher-path", default=None)
    parser.add_argument("--student", default=None, help="a finished train_e2e stage folder")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="--batches 1 --repeats 2")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    args = parser.parse_args()
    if args.tiny:
        args.batches, args.repeats = [1], 2

    from pipeline.student.model import TwoStepStudent
    from pipeline.teachers import load_teacher
    from pipeline.toy.prompts import generate_prompts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = describe_machine(device)
    print_machine(machine)
    teacher = load_teacher(args.teacher, args.teacher_path, device=device)
    if args.student:
        from pipeline.student.load import load_student
        from schemas.manifest import StudentCheckpointManifest

        folder = Path(args.student)
        manifest = StudentCheckpointManifest.model_validate_json(
            (folder / "manifest.json").read_text())
        student = load_student(folder, manifest, teacher)
    else:
        dtype = next(teacher.transformer.parameters()).dtype
        student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75,
                                              dtype=dtype).to(teacher.device).eval()
    shape = teacher.latent_shape(args.height, args.width)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def one(prompts: list[str], sampler) -> dict[str, float]:
        t0 = time.perf_counter()
        caps = teacher.encode_prompts(prompts)
        sync()
        t1 = time.perf_counter()
        noise = torch.randn(len(prompts), *shape, device=teacher.device)
        latents = sampler(caps, noise)
        sync()
        t2 = time.perf_counter()
        teacher.decode(latents)
        sync()
        t3 = time.perf_counter()
        n = len(prompts)
        return {"text_encoding": (t1 - t0) / n, "denoising": (t2 - t1) / n,
                "decoding": (t3 - t2) / n}

    samplers = {"teacher_8_step": lambda c, n: teacher.sample(c, n, 8).final,
                "student_2_step": lambda c, n: student.sample(n, c)}
    report: dict[str, object] = {
        "teacher": args.teacher, "device": device, "machine": machine,
        "image": [args.height, args.width], "latent": list(shape)}
    ratios: dict[str, float] = {}
    for batch in args.batches:
        prompts = [p.text for p in generate_prompts(batch, seed=7)]
        rows = {}
        with torch.inference_mode():
            for name, sampler in samplers.items():
                one(prompts, sampler)  # warm-up
                runs = [one(prompts, sampler) for _ in range(args.repeats)]
                row = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
                row["total"] = sum(row.values())
                row["images_per_s"] = 1 / row["total"]
                rows[name] = {k: round(v, 6) for k, v in row.items()}
        t8, t2 = rows["teacher_8_step"], rows["student_2_step"]
        rows["speedup_denoising"] = round(t8["denoising"] / t2["denoising"], 2)
        rows["speedup_end_to_end"] = round(t8["total"] / t2["total"], 2)
        report[f"batch_{batch}"] = rows
        print(f"batch {batch}:", json.dumps(rows), flush=True)
        ratios[f"end_to_end_batch_{batch}"] = rows["speedup_end_to_end"]
        ratios[f"denoising_batch_{batch}"] = rows["speedup_denoising"]
        print_ratio(f"end_to_end_batch_{batch}", rows["speedup_end_to_end"],
                    "8-step teacher time / 2-step student time, text encoding to decoded image")
        print_ratio(f"denoising_batch_{batch}", rows["speedup_denoising"],
                    "8-step teacher / 2-step student, denoiser only; bound 4x")
    report["ratios"] = ratios
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
