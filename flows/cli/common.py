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
    typer.Option("--workspace", "-w", help="Artifact root (default: the config's workspace, "
                 "else ./runs/<its name>)."),
]


def print_error(problem: TwostepError | str) -> None:
    """One ``error:`` line on stderr: the message as plain text (a path such as
    ``data/[a-z]*.txt`` or ``x[/y]`` is not read as rich markup), never wrapped."""
    err_console.print(f"[bold red]error:[/] {escape(str(problem))}", highlight=False,
                      soft_wrap=True)


def unreachable_prefect_api(url: str | None = None) -> str | None:
    """The Prefect API ``url`` (default: ``PREFECT_API_URL``) when it does not answer now;
    None when it answers or none is configured (an ephemeral server is the run's own)."""
    import os
    import urllib.request

    url = url or os.environ.get("PREFECT_API_URL")
    if not url:
        return None
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5).close()
    except (OSError, ValueError):  # ValueError: not a URL at all
        return url
    return None


def require_prefect_api(url: str | None = None) -> None:
    """Before a command that talks to a configured Prefect server (``url``, default
    ``PREFECT_API_URL``): one line when nothing answers there (else Prefect fails deep inside
    the flow with its own traceback)."""
    url = unreachable_prefect_api(url)
    if url is not None:
        fail(f"PREFECT_API_URL is {url}, and no Prefect server answers there: start one "
             f"(prefect server start --host 127.0.0.1) or unset PREFECT_API_URL for a run "
             f"with its own temporary server")


def leave_if_the_api_went_away(code: int) -> None:
    """End the command now, with ``code``, when the Prefect server went away during it
    (``distill`` calls this on its way out). Prefect's log and event services would
    otherwise retry delivering to it at interpreter exit for as long as it is gone, so a run
    that finished its work would hang; what they hold is lost."""
    import os
    import sys

    if "prefect" not in sys.modules:  # this command never talked to a Prefect server
        return
    url = unreachable_prefect_api()
    if url is None:
        return
    err_console.print(f"warning: the Prefect API at {url} is not answering: "
                      f"its flow-run state and logs there are incomplete; what is on disk is "
                      f"consistent (finished stages have manifests; rerun to resume the rest)",
                      highlight=False, soft_wrap=True, markup=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail(problem: TwostepError | str, code: int = 2) -> NoReturn:
    """Print one ``error:`` line and exit (2: a user mistake, 1: the run itself failed)."""
    print_error(problem)
    raise typer.Exit(code=code)
