"""What every ``distill`` command shares: the consoles, the common options and ``fail``.

Importing it applies :func:`flows.env.apply_defaults` first, so the Prefect and Ray defaults
are in place before any command imports either."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from flows.env import apply_defaults
from pipeline.errors import TwostepError

apply_defaults()

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


def print_error(problem: TwostepError | str) -> None:
    """One ``error:`` line on stderr: the message as plain text (a path such as
    ``data/[a-z]*.txt`` or ``x[/y]`` is not read as rich markup), never wrapped."""
    err_console.print(f"[bold red]error:[/] {escape(str(problem))}", highlight=False,
                      soft_wrap=True)


def fail(problem: TwostepError | str, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit (2: a user mistake, 1: the run itself failed)."""
    print_error(problem)
    raise typer.Exit(code=code)
