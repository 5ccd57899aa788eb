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


def main() -> None:  # pragma: no cover - console entry point
    try:
        app()
    except TwostepError as exc:
        print_error(exc)
        leave_if_the_api_went_away(2)
        sys.exit(2)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        leave_if_the_api_went_away(code)
        raise
    except BaseException:
        traceback.print_exc()  # a bug: keep its traceback, but do not hang after it
        leave_if_the_api_went_away(1)
        raise
