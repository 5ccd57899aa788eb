"""What every ``distill`` command shares: the consoles, the common options and ``fail``.

Importing it applies :func:`flows.env.apply_defaults` first, so the Prefect and Ray defaults
are in place before any command imports either."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
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


def print_error(problem: TwostepError | str, rerun: list[str] | None = None) -> None:
    """One ``error:`` line on stderr: the message as plain text (a path such as
    ``data/[a-z]*.txt`` or ``x[/y]`` is not read as rich markup), never wrapped; a way out
    that says ``distill run`` gets the options ``rerun`` (:func:`with_rerun_options`)."""
    message = with_rerun_options(str(problem), rerun or [])
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)


def rerun_options(config: str, set_: list[str] | None, workspace: str | None) -> list[str]:
    """The options that select a ``distill run``'s stages and keys: ``--config`` (unless the
    default preset), every ``--set`` and ``--workspace``, as parsed."""
    options = [] if config == "toy" else ["--config", config]
    for item in set_ or []:
        options += ["--set", item]
    return options + (["--workspace", workspace] if workspace else [])


def with_rerun_options(message: str, options: list[str]) -> str:
    """``message`` with every ``distill run`` it suggests carrying ``options``
    (:func:`rerun_options` of the command that failed): the stages' messages name the way out
    without knowing the run, and followed literally on a run of another config or workspace
    they would act on the toy preset's ``./runs/toy``."""
    if not options:
        return message
    return message.replace("distill run", f"distill run {shlex.join(options)}")


def unreachable_prefect_api(url: str | None = None) -> str | None:
    """The Prefect API ``url`` (default: ``PREFECT_API_URL``) when it does not answer now;
    None when it answers or none is configured (an ephemeral server is the run's own)."""
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


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


@contextlib.contextmanager
def ends_cleanly_on_interrupt(what: str, grace_s: float = 8.0) -> Iterator[None]:
    """Ctrl-C inside the block ends the command with one line and status 130, within
    ``grace_s`` seconds.

    A terminal's Ctrl-C reaches the whole process group, so the run's own Prefect server and
    local Ray die with the command; Prefect would then retry recording the crashed flow run
    on the dead server for minutes and end with connection tracebacks. The first interrupt
    lets the run unwind as usual (a live server records the run as crashed, which takes a
    second); if the command has not ended ``grace_s`` later, or at a second interrupt, it
    exits at once. Nothing on disk needs the unwinding: stages publish atomically, and a
    rerun resumes from their finished shards and checkpoints."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals (a command called from a worker)
        return
    message = (f"interrupted: {what} stopped; finished stages are on disk with their "
               f"manifests, and a rerun resumes the unfinished ones (a --force stage starts "
               f"again)")
    interrupted, reporting, reported = threading.Event(), threading.Lock(), []

    def report() -> None:  # once, from the main thread or the grace timer, whichever is first
        with reporting:
            if not reported:
                reported.append(True)
                print_error(message)

    def leave() -> None:
        report()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED_EXIT)

    def leave_unless_done() -> None:
        time.sleep(grace_s)
        leave()  # a daemon thread: it never runs if the command ends within the grace

    def on_interrupt(signum, frame) -> None:
        if interrupted.is_set():
            leave()
        interrupted.set()
        # What Prefect logs from here on is mostly its failing to reach the server that died
        # with the interrupt ("Crash detected!", connection errors): noise above the one
        # line. The command ends with this block, so logging stays off.
        logging.disable(logging.ERROR)
        threading.Thread(target=leave_unless_done, daemon=True).start()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        report()
        raise typer.Exit(code=INTERRUPTED_EXIT) from None
    except Exception:
        if not interrupted.is_set():
            raise
        report()  # what the interrupt broke on its way out (a dead server): not a bug
        raise typer.Exit(code=INTERRUPTED_EXIT) from None
    finally:  # None: a handler not installed from Python; Python's own is the way back
        signal.signal(signal.SIGINT, previous if previous is not None
                      else signal.default_int_handler)


def fail(problem: TwostepError | str, code: int = 2, rerun: list[str] | None = None,
         ) -> NoReturn:
    """Print one ``error:`` line and exit (2: a user mistake, 1: the run itself failed);
    ``rerun``: see :func:`print_error`."""
    print_error(problem, rerun)
    raise typer.Exit(code=code)
