"""``distill toy``: build the embedded toy world's shipped models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.cli.common import console, fail
from pipeline.errors import TwostepError
from pipeline.store import unwritable_folder

if TYPE_CHECKING:
    from pipeline.toy.teacher import TeacherTrainConfig

app = typer.Typer(help="The embedded toy world: build its shipped models.",
                  no_args_is_help=True)

TEACHER_SET_HELP = (
    "Set a build field: FIELD=VALUE (repeat; the value is read as YAML). Most used: minutes "
    "(44, the whole build), space (latent or pixel), seed (0; autoencoder_training.seed "
    "follows it unless set), guidance (2; 1: no guidance phase), guidance_minutes (5), "
    "patch (1 latent, 4 pixel), dim (128), n_layers (4), n_heads (4), batch (48), lr (2e-3), "
    "init (default or adaln_zero), max_steps, autoencoder.width (96), "
    "autoencoder_training.epochs (8), autoencoder_training.samples (25000). Every field: "
    "TeacherTrainConfig in pipeline/toy/teacher.py."
)


@app.command("build-features")
def build_features(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the shipped one).")]
    = None,
    train_size: Annotated[int, typer.Option(min=100)] = 40_000,
    test_size: Annotated[int, typer.Option(min=100)] = 5_000,
    epochs: Annotated[int, typer.Option(min=1)] = 4,
    seed: int = 0,
    min_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.99,
    augment: Annotated[bool, typer.Option(help="Train on randomly blurred and noised renders "
                                          "too (robust to generated images).")] = True,
) -> None:
    """Train the toy feature network on ground-truth renders (about 5 minutes on 2 CPUs).

    The weights are written only if every attribute reaches --min-accuracy on held-out
    renders, so a bad run never replaces good shipped weights."""
    _check_out(out, "model.safetensors", "a toy feature network")
    from pipeline.toy.features import ASSET_DIR, save_feature_net, train_feature_net

    model, info = train_feature_net(train_size=train_size, test_size=test_size, epochs=epochs,
                                    seed=seed, augment=augment,
                                    log=console.print)
    accuracy = info["held_out_accuracy"]
    console.print(f"held-out accuracy: {accuracy} ({info['train_seconds']} s)")
    console.print(f"on degraded renders: {info['held_out_degraded_accuracy']}")
    if info["min_accuracy"] < min_accuracy:
        fail(f"held-out accuracy {info['min_accuracy']:.4f} "
             f"is below --min-accuracy {min_accuracy}; nothing written", code=1)
    folder = out or ASSET_DIR
    save_feature_net(model, {**info, "command": " ".join(sys.argv[1:])}, folder)
    console.print(f"wrote {folder}")


@app.command("build-teacher")
def build_teacher(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the shipped one).")]
    = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="FIELD=VALUE",
                                                   help=TEACHER_SET_HELP)] = None,
    min_accuracy: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Lowest 8-step attribute accuracy to write the teacher to "
        "--out; a weaker build goes to OUT.rejected instead (./teacher.rejected without --out; "
        "0: always write).")] = 0.9,
) -> None:
    """Train the toy teacher with flow matching on toy renders (about 45 minutes on 2 CPUs;
    in latent space the autoencoder's two phases first, about 11 of them), distil
    classifier-free guidance into it (the last 5 minutes), then record its 8-step and naive
    2-step attribute accuracy next to the weights.

    The teacher replaces --out only if every attribute reaches --min-accuracy at 8 steps, so a
    short or failed build never replaces a good teacher (the shipped one by default); a weaker
    build is kept beside it in OUT.rejected (in ./teacher.rejected for the shipped one, outside
    the package)."""
    cfg = teacher_build_config(set_ or [])  # a mistake is refused before any training
    _check_out(out, "transformer/config.json", "a toy teacher")
    import torch

    from pipeline.toy.teacher import ASSET_DIR, attribute_accuracy, save_teacher, train_teacher

    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        build = train_teacher(cfg, log=console.print)
    except TwostepError as exc:
        fail(exc)
    info = build.info
    for steps in (8, 2):
        info[f"accuracy_{steps}_step"] = attribute_accuracy(build.model, steps,
                                                            autoencoder=build.autoencoder)
        console.print(f"{steps}-step attribute accuracy: {info[f'accuracy_{steps}_step']}")
    folder = out or ASSET_DIR
    weakest = min(info["accuracy_8_step"].items(), key=lambda item: item[1])
    below_gate = weakest[1] < min_accuracy
    rejected = Path("teacher.rejected") if out is None else folder.with_name(folder.name +
                                                                             ".rejected")
    target = rejected if below_gate else folder
    save_teacher(build.model, {**info, "command": " ".join(sys.argv[1:])}, target,
                 autoencoder=build.autoencoder)
    if below_gate:
        fail(f"8-step {weakest[0]} accuracy {weakest[1]:.4f} is below --min-accuracy "
             f"{min_accuracy}: {folder} left as it was, the build written to {target} (use "
             f"it with --set teacher.path={target}, or build longer: --set minutes=...)",
             code=1)
    console.print(f"wrote {folder}")


def _check_out(out: Path | None, marker: str, what: str) -> None:
    """Before any training: ``--out`` must be a folder this command can write, and one that it
    may replace whole (new, empty, or holding ``what``, recognised by ``marker``), never a
    file or a folder of other things, which the build would delete."""
    if out is None:
        return
    if problem := unwritable_folder(out):
        fail(f"--out {out}: {problem}")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        fail(f"--out {out}: holds other files, not {what}, and the build replaces the folder "
             f"whole: give a new or empty folder")


def teacher_build_config(overrides: list[str]) -> TeacherTrainConfig:
    """The defaults with the ``--set`` items, parsed and applied as ``distill run`` does its
    overrides; a mistake is one line per problem and exit 2."""
    from pydantic import ValidationError

    from pipeline.config import apply_override, one_line_problems, parse_override
    from pipeline.toy.teacher import TeacherTrainConfig

    data: dict[str, Any] = {}
    try:
        for item in overrides:
            apply_override(data, *parse_override(item), item)
        return TeacherTrainConfig.model_validate(data)
    except TwostepError as exc:
        fail(exc)
    except ValidationError as exc:
        fail(f"build-teacher --set: {one_line_problems(exc, TeacherTrainConfig)}")


@app.command("refine-decoder")
def refine_decoder_cmd(
    teacher: Annotated[Path | None, typer.Option(help="Latent toy teacher folder (default: "
                                                 "the shipped one).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Decoder-only epochs.")] = 3,
    latent_noise: Annotated[float, typer.Option(min=0.0, help="Latent noise (x std) the "
                                                "decoder sees.")] = 0.0,
    samples: Annotated[int, typer.Option(min=8, help="Training renders.")] = 25_000,
    eval_prompts: Annotated[int, typer.Option(min=1, help="Prompts for the accuracy "
                                              "record.")] = 500,
    seed: int = 0,
) -> None:
    """Retrain a latent toy teacher's decoder on its frozen encoder (the build's phase 2, about
    45 s per epoch on 2 CPUs). The latent space does not move, so the teacher's transformer
    stays valid. Rescores the teacher and replaces its folder whole."""
    import json

    from pipeline.errors import ArtifactError
    from pipeline.teachers.toy import ToyTeacher
    from pipeline.toy.autoencoder import AutoencoderTrainConfig, refine_decoder
    from pipeline.toy.teacher import ASSET_DIR, attribute_accuracy, save_teacher

    folder = teacher or ASSET_DIR
    try:
        loaded = ToyTeacher.load(folder)
    except ArtifactError as exc:
        fail(exc)
    record = folder / "build.json"  # rewritten with the new decoder's scores at the end
    try:
        build = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"{record}: unreadable build record ({exc})")
    if not isinstance(build, dict):
        fail(f"{record}: not a build record (a JSON object)")
    model, autoencoder = loaded.model, loaded.autoencoder
    if autoencoder is None:
        fail(f"{folder}: not a latent toy teacher: no autoencoder/ (a pixel-space teacher has "
             f"no decoder to refine)")
    cfg = AutoencoderTrainConfig(samples=samples, decoder_epochs=epochs,
                                 decoder_latent_noise=latent_noise, seed=seed)
    report = refine_decoder(autoencoder, cfg, log=console.print)
    build.setdefault("decoder_refinements", []).append(
        {**report, "epochs": epochs, "latent_noise": latent_noise, "samples": samples,
         "seed": seed, "command": " ".join(sys.argv[1:])})
    for steps in (8, 2):
        build[f"accuracy_{steps}_step"] = attribute_accuracy(
            model, steps, n_prompts=eval_prompts, autoencoder=autoencoder.eval())
        console.print(f"{steps}-step attribute accuracy: {build[f'accuracy_{steps}_step']}")
    save_teacher(model, build, folder, autoencoder=autoencoder)
    console.print(f"wrote {folder}")
