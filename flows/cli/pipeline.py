"""The pipeline commands: ``run``, ``ablate``, ``serve``, ``dashboard`` and ``status``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import (
    ConfigOpt,
    SetOpt,
    WorkspaceOpt,
    console,
    ends_cleanly_on_interrupt,
    fail,
    print_error,
    require_prefect_api,
    rerun_options,
    unreachable_prefect_api,
)
from pipeline.errors import TwostepError


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
    from stages.registry import cached_run, prepare_run

    rerun = rerun_options(config, set_, workspace)  # for a way out that says `distill run`
    try:
        # Validate everything before Prefect and Ray start: a user mistake is one line.
        prepared = prepare_run(config, set_, workspace, only)
        # Nothing to compute: answer from the cache without starting Prefect or Ray.
        summary = None if force else cached_run(prepared)
        if summary is None:
            require_prefect_api()
            from flows.distill import distill

            try:
                with ends_cleanly_on_interrupt("the run"):
                    state = distill(config=config, overrides=set_ or [], workspace=workspace,
                                    only=only or None, force=force, return_state=True)
            except typer.Exit:  # an interrupt, already reported (a RuntimeError to Python)
                raise
            except Exception as exc:  # noqa: BLE001 - only the lost server is ours to explain
                url = unreachable_prefect_api()
                if url is None:
                    raise
                first = str(exc).splitlines()[0] if str(exc) else ""
                fail(f"the Prefect API at {url} stopped answering during the run "
                     f"({type(exc).__name__}: {first}); stages that finished are on disk with "
                     f"their manifests, the others resume: rerun once the server is back",
                     code=1)
            if not state.is_completed():
                fail(state.message or "the run failed", code=1, rerun=rerun)
            summary = state.result()
        else:
            console.print("every stage is a cache hit: nothing to compute (no Prefect flow "
                          "run, no Ray)")
    except TwostepError as exc:
        fail(exc, rerun=rerun)
    table = Table(title=f"distill run ({config})")
    for column in ("stage", "key", "result", "counts", "folder"):
        _add_column(table, column)
    for stage, info in summary.items():
        counts = ", ".join(f"{k}={v}" for k, v in info["counts"].items())
        table.add_row(stage, str(info["key"]), "cached" if info["cached"] else "computed",
                      counts, str(info["uri"]))
    console.print(table)


def _add_column(table: Table, column: str) -> None:
    """Stage names and keys are never folded (a key is copied or grepped from the output, which
    is 80 columns wide when piped); the other columns fold to make room."""
    if column in ("stage", "key"):
        table.add_column(column, no_wrap=True, min_width=16 if column == "key" else None)
    else:
        table.add_column(column, overflow="fold")


def ablate(
    config: ConfigOpt = "toy",
    set_: SetOpt = None,
    workspace: WorkspaceOpt = None,
    variant: Annotated[
        list[str] | None,
        typer.Option("--variant", help="Only these variants (repeat; default: all)."),
    ] = None,
    seeds: Annotated[int, typer.Option(
        min=1, help="Training seeds per variant (0..N-1: noise, data order; same teacher "
        "shards). With N >= 2 a claim holds only beyond two standard errors.")] = 1,
) -> None:
    """Train and evaluate the full method and its ablation variants (parameterization=shared,
    gan_real=data (toy teacher only: left out for others), end_to_end=false, step1_weight=0,
    decoupled_lora) from the same teacher shards; write the
    claims table to <workspace>/ablation/ablation.md. Each (variant, seed) is cached, so a
    stopped ablation resumes when run again."""
    from stages.registry import check_variants

    try:
        # before the Prefect server starts: a variant the run contradicts fails in a second
        check_variants(config, set_ or [], workspace, variant, seeds)
    except TwostepError as exc:
        fail(exc)
    try:
        require_prefect_api()
        from flows.distill import ablate as ablate_flow

        with ends_cleanly_on_interrupt("the ablation"):
            state = ablate_flow(config=config, overrides=set_ or [], workspace=workspace,
                                variants=variant or None, seeds=seeds, return_state=True)
    except TwostepError as exc:
        fail(exc)
    if not state.is_completed():
        fail(state.message or "the ablation failed", code=1)


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
    require_prefect_api(api)
    from flows.serve import serve_all

    console.print(f"serving twostep deployments on {api} (Ctrl-C to stop)")
    serve_all(config, limit)


def dashboard(
    config: ConfigOpt = "toy",
    workspace: WorkspaceOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the MLflow UI.")] = 5000,
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
    import socket

    try:  # MLflow's server exits 0 when it cannot bind: check first, for a clear error
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = str(exc.strerror or exc).split(" (while attempting")[0]
        fail(f"cannot serve on {host}:{port} ({reason}): choose another --port or --host")
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
    try:
        store = ArtifactStore(root)
    except TwostepError as exc:
        fail(exc)
    if store.is_local and not store.exists():
        fail(f"workspace {root} does not exist (nothing has run)")
    if store.is_local and not Path(store.root).is_dir():
        fail(f"workspace {root} is a file, not a workspace folder")
    table = Table(title=f"workspace {root}")
    for column in ("stage", "key", "finished", "last run", "counts"):
        _add_column(table, column)
    problems = []  # a damaged latest.json is named after the table of the others
    for stage in STAGES:
        try:
            latest = read_latest(store, stage)
        except TwostepError as exc:
            problems.append(exc)
            table.add_row(stage, "?", "?", "unreadable (below)", "")
            continue
        if latest is None:
            table.add_row(stage, "-", "-", "never run", "")
            continue
        counts = ", ".join(f"{k}={v}" for k, v in latest["counts"].items())
        table.add_row(stage, latest["key"], _short_time(latest["created_at"]),
                      f"{'cached' if latest['cached'] else 'computed'} "
                      f"{_short_time(latest['at'])}", counts)
    console.print(table)
    for problem in problems:
        print_error(problem)
    if problems:
        raise typer.Exit(code=2)


# In the order ``distill --help`` lists them.
COMMANDS = (run, ablate, serve, dashboard, status)
