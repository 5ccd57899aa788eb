"""Operating twostep like production: a real Prefect server on 127.0.0.1, `distill serve`,
`prefect deployment run ... --watch`, a stage rerun, a failing run; then the runner stops
before the server and no process is left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.processes import free_port, kill_session

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _prefect(env, *args, timeout=900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO_ROOT)


def _run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output[-2000:]
    return match.group(1)


def test_serve_trigger_rerun_and_fail(tmp_path):
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "COLUMNS": "250"}  # rich tables would truncate artifact keys
    env.pop("RAY_ADDRESS", None)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runner = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Prefect server did not start"
                time.sleep(0.5)
        runner = subprocess.Popen([str(BIN / "distill"), "serve", "--config", "smoke"], env=env,
                                  start_new_session=True, cwd=REPO_ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _prefect(env, "deployment", "inspect", "evaluate/evaluate").returncode != 0:
            assert runner.poll() is None, "distill serve exited"
            assert time.monotonic() < deadline, "the deployments were not registered"
            time.sleep(1)

        ws = tmp_path / "ws"
        # fewer prompts than smoke's 400: what is tested here is the deployment, not the stages
        small = ["--param", 'overrides=["curate.sources=[{kind: toy, num_prompts: 80, seed: 0}]"]']
        full = _prefect(env, "deployment", "run", "distill/full", "--param",
                        f"workspace={ws}", *small, "--watch")
        assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
        for stage in ("curate", "sample_teacher", "train_init", "train_e2e", "evaluate",
                      "export"):
            latest = json.loads((ws / stage / "latest.json").read_text())
            assert latest["cached"] is False
            assert (ws / stage / latest["key"] / "manifest.json").is_file()
        artifacts = _prefect(env, "artifact", "ls")
        for key in ("evaluate-report", "train-e2e-summary", "curate-numbers",
                    "sample-teacher-progress"):
            assert key in artifacts.stdout, artifacts.stdout[-2000:]
        _report_images_render_in_the_ui(port)

        rerun = _prefect(env, "deployment", "run", "evaluate/evaluate", "--param",
                         f"workspace={ws}", *small, "--watch")
        assert rerun.returncode == 0, rerun.stdout[-3000:]
        for stage in ("curate", "sample_teacher", "train_init", "train_e2e"):
            assert json.loads((ws / stage / "latest.json").read_text())["cached"] is True

        missing = tmp_path / "missing.txt"
        failed = _prefect(env, "deployment", "run", "curate/curate", "--param",
                          f"workspace={tmp_path / 'ws2'}", "--param",
                          f'overrides=["curate.sources=[{{path: {missing}}}]"]', "--watch")
        assert failed.returncode != 0
        logs = _prefect(env, "flow-run", "logs", _run_id(failed.stdout))
        assert "missing.txt" in logs.stdout, logs.stdout[-3000:]
    finally:
        if runner is not None:
            # the runner first, by its own pid, with SIGTERM (Prefect's runner stops gracefully
            # on it): SIGINT is ignored by a process started from a background job (`.ci/run
            # &`), and the runner then sat out the 60 s grace before being killed
            kill_session(runner, signal.SIGTERM)
        kill_session(server, signal.SIGTERM)
    for proc in (runner, server):
        if proc is not None:
            left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
            assert not left, f"processes left behind: {left}"


def _report_images_render_in_the_ui(port: int) -> None:
    """The evaluate-report artifact's page in the Prefect UI, in headless Chromium: its grid
    and training-curve images load (they are inlined, not links relative to nothing)."""
    from tests.browser import evaluate_in_page

    query = json.dumps({"artifacts": {"key": {"any_": ["evaluate-report"]}}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/artifacts/filter",
                                     data=query, method="POST",
                                     headers={"Content-Type": "application/json"})
    artifact = json.loads(urllib.request.urlopen(request, timeout=30).read())[0]
    widths = evaluate_in_page(f"http://127.0.0.1:{port}/artifacts/artifact/{artifact['id']}",
                              "Array.from(document.images).map(i => i.naturalWidth)",
                              wait_for="document.images.length >= 2 && "
                                       "Array.from(document.images).every(i => i.complete)",
                              timeout=120)
    assert len(widths) >= 2 and min(widths) > 0, widths
