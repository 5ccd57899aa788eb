"""``distill generate``: images from a teacher, a distilled student (an exported folder, or the
latest training of a workspace), or the toy world's ground-truth renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import console, err_console, fail
from pipeline.errors import TwostepError
from pipeline.store import unwritable_folder

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**63 - 1

DEFAULT_SIZE = {"toy": 32, "zimage": 1024}
"""A teacher's image side when --height/--width are not given: the toy world's, and Z-Image
Turbo's (``ZImagePipeline``'s default)."""


def one_of(option: str, *choices: str) -> dict[str, Any]:
    """``typer.Option`` arguments for a choice: the choices show in ``--help`` and a wrong
    value is one ``error:`` line, exit 2, that names the option and its choices (typer's own
    choice error is one line too since :func:`flows.cli.run_app`, worded otherwise)."""

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
    generator: Annotated[str | None, typer.Option(
        help="What generates: teacher (the default), student (the latest finished train_e2e "
        "of --workspace, 2 steps), or ground-truth (toy renders of what each prompt names). "
        "--model DIR is the exported student.",
        **one_of("--generator", "teacher", "student", "ground-truth"))] = None,
    model: Annotated[Path | None, typer.Option(help="An exported twostep pipeline folder "
                                               "(export/<key>/pipeline): 2 steps.")] = None,
    workspace: Annotated[str | None, typer.Option(
        "--workspace", "-w", help="Workspace whose latest train_e2e is --generator "
        "student.")] = None,
    teacher: Annotated[str | None, typer.Option(
        help="Teacher kind (default toy; for --generator student, the run's own teacher).",
        **one_of("--teacher", "toy", "zimage"))] = None,
    teacher_path: Annotated[str | None, typer.Option(help="Teacher folder (toy: default the "
                                                     "shipped one; zimage: required).")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampling steps (teacher: default "
                                              "8; a student: 2, the only choice).")] = None,
    seed: int = 0,
    num_images: Annotated[int, typer.Option(min=1, help="Images per prompt.")] = 1,
    height: Annotated[int | None, typer.Option(min=1, help="Image height (default: the toy "
                                               "teacher 32, Z-Image 1024 as ZImagePipeline; a "
                                               "student the export's own size).")] = None,
    width: Annotated[int | None, typer.Option(min=1, help="Image width (default as --height).")]
    = None,
    device: str = "cpu",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Generate images; image i uses seed SEED + i (torch.Generator().manual_seed(SEED + i)
    for a student), so a run is reproducible."""
    from pipeline.generate import write_outputs

    prompts = [p for p in read_prompts(prompt, prompts_file) for _ in range(num_images)]
    if not 0 <= seed <= MAX_SEED - len(prompts) + 1:  # a torch generator takes 64-bit seeds
        fail(f"--seed {seed}: image i uses seed SEED + i, which must lie in 0..{MAX_SEED}; "
             f"give a seed from 0 to {MAX_SEED - len(prompts) + 1}")
    seeds = [seed + i for i in range(len(prompts))]
    if problem := unwritable_folder(out):
        fail(f"--out {out}: {problem}")
    generator = check_choices(generator, model, workspace, teacher, teacher_path, steps,
                              height, width)
    check_device(device)
    if generator == "ground-truth":
        from pipeline.toy.render import render_toy_prompts

        images, meta = render_toy_prompts(prompts, seeds), {"generator": "ground-truth:toy"}
    elif generator == "student":
        images, meta = sample_student(model, workspace, teacher, teacher_path, device,
                                      prompts, seeds, height, width, batch_size)
    else:
        steps, kind = steps or 8, teacher or "toy"
        height = height or DEFAULT_SIZE[kind]
        images = sample_teacher(kind, teacher_path, device, prompts, seeds, steps,
                                height, width or height, batch_size)
        meta = {"generator": f"teacher:{kind}", "steps": steps}
    write_outputs(out, images, prompts, seeds, meta)
    what = ("render" if generator == "ground-truth" else "image") + "s" * (len(prompts) != 1)
    console.print(f"wrote {len(prompts)} {what}, prompts.jsonl and contact_sheet.png to {out}")


def check_choices(generator: str | None, model: Path | None, workspace: str | None,
                  teacher: str | None, teacher_path: str | None, steps: int | None,
                  height: int | None, width: int | None) -> str:
    """The generator the options name (``--model`` is the student, the default the
    teacher); options that do not go together are each one ``error:`` line."""
    if model is not None and generator not in (None, "student"):
        fail(f"--model is an exported student: --generator {generator} does not go with it")
    generator = "student" if model is not None else generator or "teacher"
    if teacher == "zimage" and not teacher_path:
        fail("--teacher zimage needs --teacher-path (a local Z-Image Turbo diffusers folder)")
    if generator == "ground-truth" and ((height or 32, width or 32) != (32, 32)
                                        or teacher not in (None, "toy")):
        fail("--generator ground-truth renders the toy world: 32x32 images, --teacher toy")
    if generator == "ground-truth" and (steps is not None or teacher_path is not None):
        fail("--generator ground-truth draws what each prompt names, no sampling: --steps "
             "and --teacher-path do not go with it")
    if model is not None and (teacher is not None or teacher_path is not None):
        fail("--model is a whole exported pipeline, its own text encoder included: "
             "--teacher and --teacher-path do not go with it")
    if generator == "student":
        if model is not None and workspace is not None:
            fail("give either --model (an export) or --workspace (its latest training)")
        if model is None and workspace is None:
            fail("--generator student needs --workspace WS (or --model DIR, an export)")
        if steps not in (None, 2):
            fail(f"--steps {steps}: a distilled student samples in 2 steps")
    elif workspace is not None:
        fail("--workspace is for --generator student")
    return generator


def read_prompts(prompt: list[str] | None, prompts_file: Path | None) -> list[str]:
    """The ``--prompt`` values, or the non-blank lines of ``--prompts-file`` (one of them)."""
    if bool(prompt) == bool(prompts_file):
        fail("give either --prompt or --prompts-file")
    if prompts_file is None:
        blank = [i for i, p in enumerate(prompt or []) if not p.strip()]
        if blank:
            fail(f"--prompt number {blank[0] + 1} is blank: give the words of the image (an "
                 f"empty prompt is a blank line of --prompts-file, which is skipped)")
        return list(prompt or [])
    # Not typer's exists=/dir_okay=: these lines name the file with the problem and read it
    # once (not found, not UTF-8, no prompt).
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
    if torch_device.type not in ("cpu", "cuda"):  # e.g. meta: no numbers come out of it
        fail(f"--device {device}: use cpu or cuda[:N]")
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


def sample_student(model: Path | None, workspace: str | None, teacher: str | None,
                   teacher_path: str | None, device: str, prompts: list[str],
                   seeds: list[int], height: int | None, width: int | None,
                   batch_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """2-step images from an exported folder, or from the latest training of a workspace
    (the same pipeline class either way, so the same seeds give the same images)."""
    import torch
    from rich.progress import Progress

    from pipeline.generate import generate_with_pipeline

    try:
        if model is not None:
            from pipeline.export.folder import check_export, load_exported

            pipe = load_exported(model, device=device)
            meta = {"generator": f"student:{model}", "steps": 2}
            kind = check_export(model).get("teacher", {}).get("kind")
        else:
            pipe, kind = _workspace_student(workspace, teacher, teacher_path, device, height,
                                            width)
            meta = {"generator": f"student:{workspace}", "steps": 2}
        if kind == "toy":  # as the toy teacher warns when it encodes them
            from pipeline.toy.prompts import outside_vocabulary_warning, words_outside_vocabulary

            if unknown := words_outside_vocabulary(prompts):
                err_console.print(f"warning: {outside_vocabulary_warning(unknown, 'student')}",
                                  highlight=False, soft_wrap=True, markup=False)
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task("2-step sampling", total=len(prompts))
            images = generate_with_pipeline(pipe, prompts, seeds, height, width or height,
                                            batch_size,
                                            progress=lambda n: bar.advance(task, n))
    except (TwostepError, ValueError) as exc:
        fail(exc)
    except torch.cuda.OutOfMemoryError:
        fail(f"out of GPU memory at --batch-size {batch_size}; try a smaller one", code=1)
    return images, meta


def _workspace_student(workspace: str, teacher: str | None, teacher_path: str | None,
                       device: str, height: int | None, width: int | None):
    """The workspace's latest student as a pipeline, and its teacher's kind."""
    from pipeline.export.folder import recorded_teacher, workspace_student_pipeline
    from pipeline.store import ArtifactStore
    from schemas.config import TeacherConfig

    store, cfg = ArtifactStore(workspace), None
    if teacher is not None or teacher_path is not None:  # else the run's own teacher
        kind = teacher or "toy"
        side = height or DEFAULT_SIZE[kind]
        cfg = TeacherConfig(kind=kind, path=teacher_path, height=side, width=width or side)
    pipe = workspace_student_pipeline(store, cfg, device, height, width)
    return pipe, (cfg or recorded_teacher(store)).kind
