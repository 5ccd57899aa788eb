"""The ``distill`` command line: the typer app, its commands registered from one module per
group (:mod:`flows.cli.pipeline`: run, ablate, serve, dashboard, status;
:mod:`flows.cli.generate`; the sub-apps :mod:`flows.cli.toy` and :mod:`flows.cli.metrics`)
and :func:`main`, the ``distill`` entry point. The shared options, consoles and ``fail`` are
in :mod:`flows.cli.common`, which applies the Prefect/Ray environment defaults first."""

from __future__ import annotations

import sys
import traceback

import typer

from flows.cli import generate, metrics, pipeline, toy
from flows.cli.common import leave_if_the_api_went_away, print_error
from pipeline.errors import TwostepError

app = typer.Typer(
    name="distill",
    help="twostep: distill an 8-step text-to-image teacher into a 2-step student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in pipeline.COMMANDS:
    app.command()(command)
app.command()(generate.generate)
app.add_typer(toy.app, name="toy")
app.add_typer(metrics.app, name="metrics")


def run_app(args: list[str] | None = None) -> int:
    """Run the typer app on ``args`` (default: the process's) and return its exit status.
    Click's own mistakes (an unknown or missing option, a bad value, an unknown command) are
    one ``error:`` line naming the command's ``--help``, like every other user mistake,
    instead of typer's usage box; ``distill`` with no arguments still prints the help."""
    try:  # click's exceptions, wherever this typer takes click from (0.2x vendors it)
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click
    no_args_is_help = getattr(click, "NoArgsIsHelpError", ())  # click < 8.2 exits 0 instead
    try:
        result = app(args=args, standalone_mode=False)
    except no_args_is_help as exc:
        exc.show()
        return exc.exit_code
    except click.UsageError as exc:
        where = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
        print_error(f"{exc.format_message().rstrip('.')}{where}")
        return exc.exit_code
    except click.ClickException as exc:
        print_error(exc.format_message().rstrip("."))
        return exc.exit_code
    except typer.Abort:  # end of input at a prompt
        print_error("aborted")
        return 1
    # a command returns None; an exit (typer.Exit, --help, Ctrl-C: 130) returns its status
    return result if isinstance(result, int) else 0


def main() -> None:  # pragma: no cover - console entry point
    try:
        code = run_app()
    except TwostepError as exc:
        print_error(exc)
        code = 2
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        leave_if_the_api_went_away(code)
        raise
    except BaseException:
        traceback.print_exc()  # a bug: keep its traceback, but do not hang after it
        leave_if_the_api_went_away(1)
        raise
    leave_if_the_api_went_away(code)
    sys.exit(code)
