"""Shared helpers of the fault-injection suite: the ``distill`` command as a user runs it,
the one-line-error check and snapshots of what is on disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def distill(*args: str, cwd: Path | None = None, timeout: int = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``distill ARGS`` in a fresh process (exactly what a user types)."""
    full_env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd or REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The ``error:`` line a failed command printed, with no traceback anywhere. Exit 2 (a
    mistake found before any work) prints that line alone; exit 1 (a run that failed inside
    its flow) ends with it, after the flow's own log lines."""
    out = result.stdout + result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1, result.stderr[-4000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-4000:]
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: relative path -> (size, sha256); {} when it is absent."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        out[str(path.relative_to(root))] = (path.stat().st_size,
                                            hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def holds_lock(workspace: Path, stage: str, pid: int) -> bool:
    """Whether process ``pid`` holds ``stage``'s lock in ``workspace`` (a killed run's lock
    stays behind until the next run takes it over)."""
    for path in (workspace / ".locks").glob(f"{stage}-*.lock"):
        try:
            if json.loads(path.read_text())["pid"] == pid:
                return True
        except (OSError, ValueError, KeyError):
            continue
    return False
