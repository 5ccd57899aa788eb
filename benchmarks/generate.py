"""End-to-end generation speed: the exported 2-step pipeline against the stock 8-step path of
the same teacher, in one run on the same machine, prompt to decoded image.

- The 2-step side is a :class:`TwoStepPipeline` (``pipeline/export/pipeline_twostep.py``):
  an exported folder (``--model DIR``, loaded with ``DiffusionPipeline.from_pretrained``) or,
  without one, a student built from the teacher's weights (its speed does not depend on them).
- The 8-step baseline is the stock path: for Z-Image the stock ``ZImagePipeline`` with its own
  scheduler (``num_inference_steps=8, guidance_scale=0``), for the toy teacher its adapter
  (MiniLM, 8 Euler steps, the toy decoder).

Both time text encoding + denoising + decoding per image (median of ``--repeats`` after one
warm-up) at each ``--batches`` size. The bound is 4x (8 versus 2 transformer calls; text
encoding and decoding are shared, so end to end gets less).

    .venv/bin/python benchmarks/generate.py --out benchmarks/results/generate_toy_cpu.json
    .venv/bin/python benchmarks/generate.py --miniature-zimage \\
        --out benchmarks/results/generate_zimage_miniature_cpu.json
    .venv/bin/python benchmarks/generate.py --tiny             # batch 1, 2 repeats
    python benchmarks/generate.py --teacher zimage --teacher-path /models/Z-Image-Turbo \\
        --model runs/x/export/KEY/pipeline --height 1024 --width 1024 --batches 1 4   # GPU

Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import describe_machine, print_machine, print_ratio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the miniature Z-Image builder lives in tests/
BOUND = 4.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy", choices=["toy", "zimage"])
    parser.add_argument("--teacher-path", default=None)
    parser.add_argument("--miniature-zimage", action="store_true",
                        help="Z-Image: a miniature folder built from real diffusers classes")
    parser.add_argument("--model", type=Path, default=None, help="an exported pipeline folder")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="--batches 1 --repeats 2")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    return parser


def _two_step(args, teacher, device: str, height: int, width: int):
    from pipeline.export.folder import build_pipeline, load_exported
    from pipeline.student.model import TwoStepStudent

    if args.model is not None:
        return load_exported(args.model, device=device)
    dtype = next(teacher.transformer.parameters()).dtype
    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75, dtype=dtype)
    pipe = build_pipeline(student.eval(), teacher.pipeline_components(), height, width)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _stock_eight_step(args, teacher, height: int, width: int) -> Callable[[list[str]], object]:
    if args.teacher == "zimage":
        pipe = teacher.pipe
        pipe.set_progress_bar_config(disable=True)
        # A copy of the list: ZImagePipeline writes the chat-templated prompts back into it.
        return lambda prompts: pipe(list(prompts), height=height, width=width,
                                    num_inference_steps=8,
                                    guidance_scale=0.0, output_type="pt").images
    from pipeline.generate import generate

    return lambda prompts: generate(teacher, prompts, list(range(len(prompts))), 8, height,
                                    width, batch_size=len(prompts))


def _median_seconds_per_image(fn: Callable[[list[str]], object], prompts: list[str],
                              repeats: int, device: str) -> float:
    def once() -> float:
        start = time.perf_counter()
        fn(prompts)
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / len(prompts)

    once()  # warm-up
    return sorted(once() for _ in range(repeats))[repeats // 2]


def main() -> None:
    args = _parser().parse_args()
    if args.tiny:
        args.batches, args.repeats = [1], 2
    from pipeline.teachers import load_teacher
    from pipeline.toy.prompts import generate_prompts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = describe_machine(device)
    print_machine(machine)
    tmp = None
    if args.miniature_zimage:
        from tests.zimage_miniature import build_miniature_zimage

        tmp = tempfile.TemporaryDirectory(prefix="twostep-zimage-mini-")
        build_miniature_zimage(Path(tmp.name))
        args.teacher, args.teacher_path = "zimage", tmp.name
    size = 32 if args.teacher == "toy" or args.miniature_zimage else 1024
    height, width = args.height or size, args.width or size
    teacher = load_teacher(args.teacher, args.teacher_path, device=device)
    two_step = _two_step(args, teacher, device, height, width)
    from pipeline.generate import generate_with_pipeline

    paths = {"stock_8_step": _stock_eight_step(args, teacher, height, width),
             "exported_2_step": lambda prompts: generate_with_pipeline(
                 two_step, prompts, list(range(len(prompts))), height, width,
                 batch_size=len(prompts))}
    report: dict[str, object] = {
        "teacher": args.teacher, "miniature": args.miniature_zimage, "device": device,
        "machine": machine, "image": [height, width],
        "two_step": str(args.model) if args.model else "a TwoStepPipeline built in memory",
        "baseline": "ZImagePipeline, 8 steps" if args.teacher == "zimage"
        else "toy teacher adapter, 8 steps", "bound": BOUND}
    ratios: dict[str, float] = {}
    with torch.inference_mode():
        for batch in args.batches:
            prompts = [p.text for p in generate_prompts(batch, seed=7)]
            row = {name: round(_median_seconds_per_image(fn, prompts, args.repeats, device), 6)
                   for name, fn in paths.items()}
            ratio = round(row["stock_8_step"] / row["exported_2_step"], 2)
            report[f"batch_{batch}"] = {"seconds_per_image": row, "speedup": ratio}
            print(f"batch {batch}: seconds per image {json.dumps(row)}", flush=True)
            ratios[f"end_to_end_batch_{batch}"] = ratio
            print_ratio(f"end_to_end_batch_{batch}", ratio,
                        f"stock 8-step / exported 2-step, prompt to image; bound {BOUND:g}x")
    report["ratios"] = ratios
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print("wrote", args.out)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
