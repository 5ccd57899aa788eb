"""``distill generate``: images from a teacher, or the toy world's ground-truth renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import console, err_console, fail
from pipeline.errors import TwostepError

if TYPE_CHECKING:
    import torch


def one_of(option: str, *choices: str) -> dict[str, Any]:
    """``typer.Option`` arguments for a choice: the choices show in ``--help`` and a wrong
    value is one ``error:`` line, exit 2 (typer's own choice error is a usage box)."""

    def parse(value: str) -> str:
        if value not in choices:
            fail(f"{option} {value!r}: choose {' or '.join(choices)}")
        return value

    return {"parser": parse, "metavar": f"[{'|'.join(choices)}]"}


def generate(
    out: Annotated[Path, typer.Option(help="Output folder for PNGs, prompts.jsonl and a "
                                      "contact sheet.")],
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt (repeat for more).")]
    = None,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line "
                                                      "(blank lines are skipped).")] = None,
    generator: Annotated[str, typer.Option(
        help="What generates: teacher, or ground-truth (toy renders of what each prompt "
        "names; the student lands with training).",
        **one_of("--generator", "teacher", "ground-truth"))] = "teacher",
    teacher: Annotated[str, typer.Option(help="Teacher kind.",
                                         **one_of("--teacher", "toy", "zimage"))] = "toy",
    teacher_path: Annotated[str | None, typer.Option(help="Teacher folder (toy: default the "
                                                     "shipped one; zimage: required).")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 8,
    seed: int = 0,
    num_images: Annotated[int, typer.Option(min=1, help="Images per prompt.")] = 1,
    height: int = 32,
    width: int = 32,
    device: str = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Generate images; image i uses seed SEED + i, so a run is reproducible."""
    from pipeline.generate import write_outputs

    prompts = [p for p in read_prompts(prompt, prompts_file) for _ in range(num_images)]
    seeds = [seed + i for i in range(len(prompts))]
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    if generator == "ground-truth" and ((height, width) != (32, 32) or teacher != "toy"):
        fail("--generator ground-truth renders the toy world: 32x32 images, --teacher toy")
    check_device(device)
    if generator == "ground-truth":
        from pipeline.toy.render import render_toy_prompts

        write_outputs(out, render_toy_prompts(prompts, seeds), prompts, seeds,
                      {"generator": "ground-truth:toy"})
        console.print(f"wrote {len(prompts)} renders, prompts.jsonl and contact_sheet.png "
                      f"to {out}")
        return
    images = sample_teacher(teacher, teacher_path, device, prompts, seeds, steps, height,
                            width, batch_size)
    write_outputs(out, images, prompts, seeds,
                  {"generator": f"{generator}:{teacher}", "steps": steps})
    console.print(f"wrote {len(prompts)} images, prompts.jsonl and contact_sheet.png to {out}")


def read_prompts(prompt: list[str] | None, prompts_file: Path | None) -> list[str]:
    """The ``--prompt`` values, or the non-blank lines of ``--prompts-file`` (one of them)."""
    if bool(prompt) == bool(prompts_file):
        fail("give either --prompt or --prompts-file")
    if prompts_file is None:
        return list(prompt or [])
    # Not typer's exists=/dir_okay=: its error is a usage box, not one ``error:`` line.
    if not prompts_file.is_file():
        fail(f"--prompts-file {prompts_file}: not found")
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        fail(f"--prompts-file {prompts_file}: not UTF-8 ({exc})")
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        fail(f"--prompts-file {prompts_file}: no prompt")
    return prompts


def check_device(device: str) -> None:
    """``--device`` names a torch device that is here."""
    import torch

    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        fail(f"--device {device!r}: {exc}")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: CUDA is not available here")


def sample_teacher(kind: str, path: str | None, device: str, prompts: list[str],
                   seeds: list[int], steps: int, height: int, width: int,
                   batch_size: int) -> torch.Tensor:
    """Load the teacher and sample ``steps``-step images, with a progress bar on stderr."""
    import torch
    from rich.progress import Progress

    from pipeline.generate import generate as run_generate
    from pipeline.teachers import load_teacher

    try:
        model = load_teacher(kind, path, device=device)
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task(f"{steps}-step sampling", total=len(prompts))
            return run_generate(model, prompts, seeds, steps, height, width, batch_size,
                                progress=lambda n: bar.advance(task, n))
    except (TwostepError, ValueError) as exc:
        fail(exc)
    except torch.cuda.OutOfMemoryError:
        fail(f"out of GPU memory at --batch-size {batch_size}; try a smaller one", code=1)
