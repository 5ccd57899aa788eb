"""Cluster mode: with RAY_ADDRESS set, a stage attaches to that Ray cluster (a separate head
started here on 127.0.0.1) instead of starting its own, and leaves the cluster running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import free_port

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_stage_runs_on_a_separate_ray_head_through_ray_address(tmp_path):
    port = free_port()
    # A short temp dir: Ray's socket paths must stay under 107 characters.
    head_tmp = Path(f"/tmp/twostep-head-{os.getpid()}")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": str(REPO_ROOT)}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
         str(port), "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir",
         str(head_tmp), "--disable-usage-stats"], env=env, capture_output=True, text=True,
        timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        local_tmp = tmp_path / "would-be-local-ray"
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--config", "smoke", "--workspace",
             str(tmp_path / "ws"), "--only", "curate", "--set", f"ray.temp_dir={local_tmp}"],
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}, cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output[-3000:]
        assert "computed" in output
        # The driver ran against the head: its log is in the head's session, and no local
        # instance was started in ray.temp_dir.
        logs = head_tmp / "session_latest" / "logs"
        assert list(logs.glob(f"python-core-driver-*_{run.pid}.log")), sorted(
            p.name for p in logs.iterdir())[:20]
        assert not local_tmp.exists()
        # The head is still up (the stage did not shut the cluster down).
        status = subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{port}"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
    finally:
        _stop_head(head_tmp)
        subprocess.run(["rm", "-rf", str(head_tmp)], check=False)


def _stop_head(head_tmp: Path) -> None:
    """Stop only this head's processes (`ray stop` would stop every Ray on the machine, the
    test session's own instance included): those whose command line names its temp dir;
    its workers exit with their raylet."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = subprocess.run(["pgrep", "-f", str(head_tmp)], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
