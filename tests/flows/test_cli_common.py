"""What every command shares (flows/cli/common.py): Ctrl-C during a run is one line and status
130, quickly, whatever the run's unwinding does; a way out names the run that failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flows.cli.common import rerun_options, with_rerun_options
from tests.conftest import REPO_ROOT

# A command whose block unwinds like a run whose Prefect server died with the Ctrl-C: it
# catches the interrupt and goes on retrying (Prefect recording the crashed run).
STUBBORN = textwrap.dedent("""
    import sys, time
    import typer
    from flows.cli.common import ends_cleanly_on_interrupt

    def command(stubborn: bool = False) -> None:
        with ends_cleanly_on_interrupt("the run", grace_s=1.0):
            print("ready", flush=True)
            while True:
                try:
                    time.sleep(0.05)
                except KeyboardInterrupt:
                    if not stubborn:
                        raise
                    while True:  # retrying a dead server
                        time.sleep(0.05)

    typer.run(command)
""")


def _interrupt(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN, *args], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), \
        time.monotonic() - start


def test_an_interrupt_is_one_line_and_status_130():
    result, _ = _interrupt()
    assert result.returncode == 130
    assert result.stderr.strip() == (
        "error: interrupted: the run stopped; finished stages are on disk with their "
        "manifests, and a rerun resumes the unfinished ones (a --force stage starts again)")


def test_an_unwinding_that_hangs_ends_after_the_grace():
    result, seconds = _interrupt("--stubborn")
    assert result.returncode == 130 and 1.0 <= seconds < 20, seconds
    assert result.stderr.count("error: interrupted: the run stopped") == 1
    assert "Traceback" not in result.stderr


WAY_OUT = "shard x: corrupt; recompute the teacher samples with distill run --only sample_teacher"


@pytest.mark.parametrize(("parsed", "suggested"), [
    (("mine.yaml", None, "/ws dir"),
     "distill run --config mine.yaml --workspace '/ws dir' --only sample_teacher"),
    (("smoke", ["train_e2e.steps=5", "a.b=[1, 2]"], None),
     "distill run --config smoke --set train_e2e.steps=5 --set 'a.b=[1, 2]' --only "
     "sample_teacher"),
    (("toy", None, None), "distill run --only sample_teacher"),  # the defaults: as written
])
def test_a_suggested_rerun_names_the_run_that_failed(parsed, suggested):
    assert with_rerun_options(WAY_OUT, rerun_options(*parsed)).endswith(suggested)
