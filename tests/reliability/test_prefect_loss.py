"""The Prefect server stops while a run it orchestrates is computing a stage: the run ends
(it does not hang), the stage's work on disk stays consistent (a finished folder verifies, an
unfinished one has no manifest, no lock is left held), and the next run, with a server back,
resumes. What the user sees is recorded in docs/reliability.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.lock import LOCKS_DIR
from pipeline.samples.reader import TeacherSampleReader
from pipeline.stage import cached_manifest, read_latest
from pipeline.store import ArtifactStore
from schemas.manifest import TeacherSamplesManifest
from tests.conftest import REPO_ROOT
from tests.processes import free_port, kill_session
from tests.reliability.conftest import holds_lock

BIN = Path(sys.executable).parent
SETTINGS = ["curate.sources=[{kind: toy, num_prompts: 300, seed: 9}]",
            "sample_teacher.samples_per_shard=16", "sample_teacher.batch_size=16",
            "teacher.dtype=float32"]


def _start_server(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return server
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no Prefect server"
            time.sleep(0.5)


def _run(workspace: Path, port: int, home: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "flows.cli", "run", "--config", "smoke", "--workspace",
            str(workspace), "--only", "curate", "--only", "sample_teacher"]
    for item in SETTINGS:
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200",
           "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(3600)
@pytest.mark.soak
def test_the_prefect_server_stops_during_a_stage_and_the_next_run_resumes(tmp_path):
    workspace, home = tmp_path / "ws", tmp_path / "prefect"
    port = free_port()
    server = _start_server(home, port)
    run = _run(workspace, port, home)
    try:
        deadline = time.monotonic() + 300
        while not holds_lock(workspace, "sample_teacher", run.pid):
            assert run.poll() is None and time.monotonic() < deadline, run.stdout.read()
            time.sleep(0.1)
        time.sleep(3)  # into the sampling
        kill_session(server, signal.SIGKILL)
        try:
            output, _ = run.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail("the run hung after the Prefect server stopped")
    finally:
        kill_session(run)
        kill_session(server)
    tail = "\n".join(output.splitlines()[-12:])
    print(f"exit {run.returncode}; the run's last lines:\n{tail}")
    store = ArtifactStore(str(workspace))
    (stage_dir,) = [p for p in (workspace / "sample_teacher").iterdir() if p.is_dir()]
    finished = (stage_dir / "manifest.json").exists()
    if finished:  # the stage finished its work and committed it before the run ended
        store.read_manifest(f"sample_teacher/{stage_dir.name}", TeacherSamplesManifest,
                            verify="sha256")
    assert "Traceback" not in tail
    assert run.returncode in (0, 1)  # it ends by itself: no hang at exit
    assert "the Prefect API at" in tail and "stopped answering during the run" in tail
    assert not list((workspace / LOCKS_DIR).glob("*.lock"))  # released, not left held

    server = _start_server(home, port)
    try:
        again = _run(workspace, port, home)
        output, _ = again.communicate(timeout=600)
        assert again.returncode == 0, output[-4000:]
    finally:
        kill_session(server, signal.SIGTERM)
    latest = read_latest(store, "sample_teacher")
    manifest = cached_manifest(store, f"sample_teacher/{latest['key']}", TeacherSamplesManifest)
    assert manifest is not None and latest["key"] == stage_dir.name
    assert latest["cached"] == finished
    for split in ("train", "eval"):
        keys = [s["key"] for s in TeacherSampleReader.from_manifest(store, manifest, split)]
        assert len(keys) == len(set(keys)) == manifest.splits[split].num_samples
