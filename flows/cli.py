"""The ``distill`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from flows.env import apply_defaults
from pipeline.errors import TwostepError

apply_defaults()

app = typer.Typer(
    name="distill",
    help="twostep: distill an 8-step text-to-image teacher into a 2-step student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    str, typer.Option("--config", "-c", help="Preset name (toy, smoke, ...) or a YAML file.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config field: section.field=value (repeat)."),
]
WorkspaceOpt = Annotated[
    str | None,
    typer.Option("--workspace", "-w", help="Artifact root (default: ./runs/<preset>)."),
]


def fail(problem: TwostepError | str, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit (2: a user mistake, 1: the run itself failed)."""
    err_console.print(f"[bold red]error:[/] {problem}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


@app.command()
def run(
    config: ConfigOpt = "toy",
    set_: SetOpt = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Compute only this stage (repeat); upstream must be cached."),
    ] = None,
    workspace: WorkspaceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute, ignore the cache.")] = False,
) -> None:
    """Run the pipeline (or some stages) locally: ephemeral Prefect, local Ray."""
    from stages.registry import prepare_run

    try:
        # Validate everything before Prefect and Ray start: a user mistake is one line.
        prepare_run(config, set_, workspace, only)
        from flows.distill import distill

        state = distill(config=config, overrides=set_ or [], workspace=workspace,
                        only=only or None, force=force, return_state=True)
    except TwostepError as exc:
        fail(exc)
    if not state.is_completed():
        fail(state.message or "the run failed", code=1)
    summary = state.result()
    table = Table(title=f"distill run ({config})")
    for column in ("stage", "key", "result", "counts", "folder"):
        table.add_column(column, overflow="fold")
    for stage, info in summary.items():
        counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items())
        table.add_row(stage, str(info["key"]), "cached" if info["cached"] else "computed",
                      counts, str(info["uri"]))
    console.print(table)


@app.command()
def ablate(
    config: ConfigOpt = "toy",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    variant: Annotated[
        list[str] | None,
        typer.Option("--variant", help="Only these variants (repeat; default: all)."),
    ] = None,
) -> None:
    """Train and evaluate the full method and its ablation variants (parameterization=shared,
    gan_real=data, end_to_end=false, step1_weight=0) from the same teacher shards; write the
    claims table to <workspace>/ablation/ablation.md."""
    from pipeline.ablation import VARIANTS
    from stages.registry import prepare_run

    unknown = [v for v in variant or [] if v not in VARIANTS]
    if unknown:
        fail(f"unknown variant {unknown[0]!r} (variants: {', '.join(VARIANTS)})")
    try:
        for name in variant or list(VARIANTS):
            prepare_run(config, [*(set_ or []), *VARIANTS[name]], workspace, None)
        from flows.distill import ablate as ablate_flow

        state = ablate_flow(config=config, overrides=set_ or [], workspace=workspace,
                            variants=variant or None, return_state=True)
    except TwostepError as exc:
        fail(exc)
    if not state.is_completed():
        fail(state.message or "the ablation failed", code=1)


@app.command()
def serve(
    config: ConfigOpt = "toy",
    limit: Annotated[int | None, typer.Option(help="Flow runs at a time (default: no cap).")]
    = None,
) -> None:
    """Register and serve the deployments distill/full, <stage>/<stage> and
    distill-ablate/ablate on the Prefect server at PREFECT_API_URL (start one with
    `prefect server start --host 127.0.0.1`); trigger with `prefect deployment run distill/full`."""
    import os

    from pipeline.config import load_config

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        try:
            from prefect.settings import PREFECT_API_URL

            api = PREFECT_API_URL.value()
        except Exception:  # noqa: BLE001 - unset or unreadable profile: same answer
            api = None
    if not api:
        fail("no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after "
             "`prefect server start --host 127.0.0.1 --port 4200`)")
    try:
        load_config(config)  # the default preset must at least be valid
    except TwostepError as exc:
        fail(exc)
    from flows.serve import serve_all

    console.print(f"serving twostep deployments on {api} (Ctrl-C to stop)")
    serve_all(config, limit)


@app.command()
def dashboard(
    config: ConfigOpt = "toy",
    workspace: WorkspaceOpt = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Bind address (127.0.0.1: this machine only).")]
    = "127.0.0.1",
) -> None:
    """Serve the MLflow UI for the workspace's tracking store (training curves, sample grids)."""
    import subprocess

    from pipeline.config import load_config, workspace_of
    from pipeline.store import ArtifactStore
    from pipeline.tracking import MLFLOW_ARTIFACTS, MLFLOW_DB, mlflow_uri

    try:
        cfg = load_config(config, None, workspace)
        store = ArtifactStore(workspace_of(cfg))
        if cfg.tracking.mlflow_uri:
            fail(f"tracking.mlflow_uri is {cfg.tracking.mlflow_uri}: open that server's UI")
        if not store.exists(MLFLOW_DB):
            fail(f"no MLflow store at {store.uri(MLFLOW_DB)}; run the training stages first")
        uri = mlflow_uri(cfg.tracking, store)
    except TwostepError as exc:
        fail(exc)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--default-artifact-root", store.path(MLFLOW_ARTIFACTS),
               "--host", host, "--port", str(port)]
    console.print(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C to stop)")
    try:
        raise typer.Exit(subprocess.call(command))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _short_time(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("+00:00") + " UTC"


@app.command()
def status(
    config: ConfigOpt = "toy",
    workspace: WorkspaceOpt = None,
) -> None:
    """Show each stage's latest result in the workspace."""
    from pipeline.config import load_config, workspace_of
    from pipeline.stage import read_latest
    from pipeline.store import ArtifactStore
    from stages.registry import STAGES

    try:
        root = workspace if workspace else workspace_of(load_config(config))
    except TwostepError as exc:
        fail(exc)
    if "://" not in root and not Path(root).exists():
        fail(f"workspace {root} does not exist (nothing has run)")
    store = ArtifactStore(root)
    table = Table(title=f"workspace {root}")
    for column in ("stage", "key", "finished", "last run", "counts"):
        table.add_column(column, overflow="fold")
    for stage in STAGES:
        try:
            latest = read_latest(store, stage)
        except TwostepError as exc:
            fail(exc)
        if latest is None:
            table.add_row(stage, "-", "-", "never run", "")
            continue
        counts = ", ".join(f"{k}={v}" for k, v in latest["counts"].items())
        table.add_row(stage, latest["key"], _short_time(latest["created_at"]),
                      f"{'cached' if latest['cached'] else 'computed'} "
                      f"{_short_time(latest['at'])}", counts)
    console.print(table)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output folder for PNGs, prompts.jsonl and a "
                                      "contact sheet.")],
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt (repeat for more).")]
    = None,
    prompts_file: Annotated[Path | None, typer.Option(help="Text file, one prompt a line "
                                                      "(blank lines are skipped).")] = None,
    generator: Annotated[str, typer.Option(help="What generates: teacher, or ground-truth "
                                           "(toy renders of what each prompt names; the "
                                           "student lands with training).")] = "teacher",
    teacher: Annotated[str, typer.Option(help="Teacher kind: toy or zimage.")] = "toy",
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
    from rich.progress import Progress

    from pipeline.generate import generate as run_generate
    from pipeline.generate import write_outputs
    from pipeline.teachers import load_teacher

    if generator not in ("teacher", "ground-truth"):
        fail(f"--generator {generator!r}: choose teacher or "
             f"ground-truth")
    if bool(prompt) == bool(prompts_file):
        fail("give either --prompt or --prompts-file")
    if prompts_file is not None:
        if not prompts_file.is_file():
            fail(f"--prompts-file {prompts_file}: not found")
        try:
            lines = prompts_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            fail(f"--prompts-file {prompts_file}: not UTF-8 "
                 f"({exc})")
        base = [line.strip() for line in lines if line.strip()]
        if not base:
            fail(f"--prompts-file {prompts_file}: no prompt")
    else:
        base = list(prompt or [])
    prompts = [p for p in base for _ in range(num_images)]
    seeds = [seed + i for i in range(len(prompts))]
    if out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
    if generator == "ground-truth" and ((height, width) != (32, 32) or teacher != "toy"):
        fail("--generator ground-truth renders the toy world: "
             "32x32 images, --teacher toy")
    import torch

    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        fail(f"--device {device!r}: {exc}")
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {device}: CUDA is not available here")
    if generator == "ground-truth":
        from pipeline.toy.render import render_toy_prompts

        images = render_toy_prompts(prompts, seeds)
        write_outputs(out, images, prompts, seeds, {"generator": "ground-truth:toy"})
        console.print(f"wrote {len(prompts)} renders, prompts.jsonl and contact_sheet.png "
                      f"to {out}")
        return
    try:
        model = load_teacher(teacher, teacher_path, device=device)
        with Progress(console=err_console, transient=True) as bar:
            task = bar.add_task(f"{steps}-step sampling", total=len(prompts))
            images = run_generate(model, prompts, seeds, steps, height, width, batch_size,
                                  progress=lambda n: bar.advance(task, n))
    except (TwostepError, ValueError) as exc:
        fail(exc)
    except torch.cuda.OutOfMemoryError:
        fail(f"out of GPU memory at --batch-size {batch_size}; "
             f"try a smaller one", code=1)
    write_outputs(out, images, prompts, seeds,
                  {"generator": f"{generator}:{teacher}", "steps": steps})
    console.print(f"wrote {len(prompts)} images, prompts.jsonl and contact_sheet.png to {out}")


toy_app = typer.Typer(help="The embedded toy world: build its shipped models.",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("build-features")
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


@toy_app.command("build-teacher")
def build_teacher(
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the shipped one).")]
    = None,
    space: Annotated[str, typer.Option(help="latent (the toy autoencoder's 8x8x8 latent, "
                                       "trained first) or pixel (3x32x32).")] = "latent",
    minutes: Annotated[float, typer.Option(min=0.05, help="Time budget of the whole build "
                                           "(autoencoder included).")] = 44.0,
    max_steps: Annotated[int, typer.Option(min=1)] = 100_000,
    seed: int = 0,
    patch: Annotated[int | None, typer.Option(help="Patch size on the latent grid or in "
                                              "pixels (default 1 latent, 4 pixel).")] = None,
    dim: Annotated[int, typer.Option(help="Transformer width.")] = 128,
    n_layers: Annotated[int, typer.Option(min=1, help="Main transformer layers.")] = 4,
    n_heads: Annotated[int, typer.Option(min=1, help="Attention heads (head dim a multiple "
                                         "of 8).")] = 4,
    batch: Annotated[int, typer.Option(min=1)] = 48,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = 2e-3,
    init: Annotated[str, typer.Option(help="Weight initialisation: default (PyTorch's) or "
                                      "adaln_zero (DiT's).")] = "default",
    ae_epochs: Annotated[int, typer.Option(min=1, help="Autoencoder epochs (latent).")] = 8,
    ae_samples: Annotated[int, typer.Option(min=8, help="Autoencoder training renders.")]
    = 25_000,
    ae_width: Annotated[int, typer.Option(min=8, help="Autoencoder conv width.")] = 96,
    guidance: Annotated[float, typer.Option(min=1.0, help="Classifier-free guidance weight "
                                            "distilled into the teacher (1: none).")] = 2.0,
    guidance_minutes: Annotated[float, typer.Option(min=0.01, help="Minutes of the budget "
                                                    "for guidance distillation.")] = 5.0,
) -> None:
    """Train the toy teacher with flow matching on toy renders (about 45 minutes on 2 CPUs;
    in latent space the autoencoder's two phases first, about 11 of them), distil
    classifier-free guidance into it (the last 5 minutes), then record its 8-step and naive
    2-step attribute accuracy next to the weights."""
    import torch

    from pipeline.toy.autoencoder import AutoencoderConfig, AutoencoderTrainConfig
    from pipeline.toy.teacher import (
        ASSET_DIR,
        INITS,
        SPACES,
        TeacherTrainConfig,
        attribute_accuracy,
        save_teacher,
        train_teacher,
    )

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if init not in INITS:
        fail(f"--init: {init!r} is not one of {', '.join(INITS)}")
    if space not in SPACES:
        fail(f"--space: {space!r} is not one of {', '.join(SPACES)}")
    try:
        cfg = TeacherTrainConfig(
            minutes=minutes, max_steps=max_steps, seed=seed, space=space,
            patch=patch or (1 if space == "latent" else 4), dim=dim, n_layers=n_layers,
            n_heads=n_heads, batch=batch, lr=lr, init=init, guidance=guidance,
            guidance_minutes=guidance_minutes, autoencoder=AutoencoderConfig(width=ae_width),
            autoencoder_training=AutoencoderTrainConfig(samples=ae_samples, epochs=ae_epochs,
                                                        seed=seed))
    except ValueError as exc:
        fail(str(exc))
    build = train_teacher(cfg, log=console.print)
    info = build.info
    for steps in (8, 2):
        info[f"accuracy_{steps}_step"] = attribute_accuracy(build.model, steps,
                                                            autoencoder=build.autoencoder)
        console.print(f"{steps}-step attribute accuracy: {info[f'accuracy_{steps}_step']}")
    folder = out or ASSET_DIR
    save_teacher(build.model, {**info, "command": " ".join(sys.argv[1:])}, folder,
                 autoencoder=build.autoencoder)
    console.print(f"wrote {folder}")


@toy_app.command("refine-decoder")
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
        build = json.loads((folder / "build.json").read_text(encoding="utf-8"))
    except (ArtifactError, OSError, json.JSONDecodeError) as exc:
        fail(f"{folder}: not a latent toy teacher: {exc}")
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


metrics_app = typer.Typer(help="Real-domain metric networks (FID/KID, CLIP score).",
                          no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("convert-inception")
def convert_inception(
    source: Annotated[Path, typer.Argument(help="Published FID Inception checkpoint, e.g. "
                                           "pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")],
    target: Annotated[Path, typer.Argument(help="safetensors file to write (the value of "
                                           "evaluate.real_metrics.fid.weights).")],
) -> None:
    """Convert the FID Inception weights to safetensors, once, for the FID/KID plugin.

    The checkpoint is read with torch.load(weights_only=True) (tensors only, no code runs)
    and checked against the architecture before the file is written."""
    from pipeline.evaluation.inception import convert_fid_weights

    try:
        count = convert_fid_weights(source, target)
    except TwostepError as exc:
        fail(exc)
    console.print(f"wrote {count} tensors to {target}")


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except TwostepError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
