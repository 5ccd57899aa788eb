"""Two writers never share a stage folder: the per-stage lock (pipeline/lock.py), alone and
as `distill run` and the Prefect flow meet it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from pipeline.errors import TwostepError
from pipeline.lock import LockLostError, StageLock, StageLockedError, lock_path, stage_lock
from pipeline.stage import compute_key
from pipeline.store import ArtifactStore
from stages.registry import STAGES, prepare_run
from tests.reliability.conftest import distill, error_line


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(store: ArtifactStore, path: str, **fields) -> None:
    now = time.time()
    record = {"owner": "someone", "host": "elsewhere", "pid": 1, "command": "distill run",
              "acquired_at": now, "heartbeat_at": now, "token": "t0", **fields}
    store.write_bytes(json.dumps(record).encode(), path)


def test_a_held_lock_refuses_a_second_writer_with_its_holder(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with stage_lock(store, "curate", "k1") as held:
        with pytest.raises(StageLockedError) as caught:
            StageLock(store, "curate", "k1").acquire()
        message = str(caught.value)
        assert "\n" not in message
        assert f"pid {os.getpid()}" in message and "stage curate is being computed" in message
        assert held.record.host in message
        held.ensure_held()
        with stage_lock(store, "curate", "k2"):  # another key: another lock
            pass
    assert not store.exists(lock_path("curate", "k1"))  # released
    with stage_lock(store, "curate", "k1"):
        pass


def test_stale_locks_are_taken_over_and_live_ones_are_not(tmp_path):
    import socket

    store = ArtifactStore(str(tmp_path))
    path = lock_path("train_init", "k")
    _plant(store, path, host=socket.gethostname(), pid=_dead_pid())  # a killed run here
    with stage_lock(store, "train_init", "k") as lock:
        assert json.loads(store.read_bytes(path))["token"] == lock.record.token
    _plant(store, path, heartbeat_at=time.time() - 3600)  # a dead holder elsewhere
    with stage_lock(store, "train_init", "k", stale_after_s=60):
        pass
    _plant(store, path)  # a live holder elsewhere: fresh heartbeat
    with pytest.raises(StageLockedError, match="someone@elsewhere pid 1"):
        StageLock(store, "train_init", "k", stale_after_s=60).acquire()
    assert json.loads(store.read_bytes(path))["token"] == "t0"  # untouched


def test_the_heartbeat_moves_and_a_lost_lock_never_commits(tmp_path):
    store = ArtifactStore(str(tmp_path))
    path = lock_path("evaluate", "k")
    lock = StageLock(store, "evaluate", "k", heartbeat_s=0.05)
    lock.acquire()
    first = json.loads(store.read_bytes(path))["heartbeat_at"]
    deadline = time.monotonic() + 10
    while json.loads(store.read_bytes(path))["heartbeat_at"] == first:
        assert time.monotonic() < deadline, "the heartbeat did not move"
        time.sleep(0.02)
    _plant(store, path, token="other")  # taken over while this run was suspended
    with pytest.raises(LockLostError, match="did not commit its result"):
        lock.ensure_held()
    lock.release()
    assert json.loads(store.read_bytes(path))["token"] == "other"  # not removed


def test_two_threads_race_for_one_lock_and_exactly_one_wins(tmp_path):
    store = ArtifactStore(str(tmp_path))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        try:
            lock = StageLock(store, "curate", "race")
            lock.acquire()
        except StageLockedError:
            outcomes.append("refused")
            return
        outcomes.append("won")
        time.sleep(0.3)  # hold it while the others try
        lock.release()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]


def _curate_key(workspace) -> tuple[ArtifactStore, str]:
    run = prepare_run("smoke", [], str(workspace), ["curate"])
    return run.store, compute_key(STAGES["curate"], run.config, {})


def _hold_in_another_process(store: ArtifactStore, key: str) -> subprocess.Popen:
    """A live process holding curate's lock (what a concurrent run looks like)."""
    code = (f"import sys, time\nfrom pipeline.store import ArtifactStore\n"
            f"from pipeline.lock import stage_lock\n"
            f"with stage_lock(ArtifactStore({store.root!r}), 'curate', {key!r}):\n"
            f"    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_distill_run_and_the_flow_stop_at_a_held_stage_and_run_after_release(tmp_path):
    """A second `distill run` (and the Prefect flow a deployment runs) meets a stage that
    another live process computes: one line naming the holder, nothing written into the
    stage folder; once released, the same command computes."""
    workspace = tmp_path / "ws"
    store, key = _curate_key(workspace)
    holder = _hold_in_another_process(store, key)
    try:
        result = distill("run", "--config", "smoke", "--workspace", str(workspace),
                         "--only", "curate")
        line = error_line(result, code=2)  # found before Prefect or Ray start
        assert f"pid {holder.pid}" in line and "stage curate is being computed" in line
        assert not (workspace / "curate" / key).exists()

        from flows.distill import STAGE_FLOWS

        state = STAGE_FLOWS["curate"](config="smoke", workspace=str(workspace),
                                      return_state=True)
        assert state.is_failed() and f"pid {holder.pid}" in (state.message or "")
        assert not (workspace / "curate" / key).exists()
    finally:
        holder.communicate("", timeout=30)
    result = distill("run", "--config", "smoke", "--workspace", str(workspace),
                     "--only", "curate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workspace / "curate" / key / "manifest.json").exists()
    assert not store.exists(lock_path("curate", key))


@pytest.mark.soak
def test_two_distill_runs_at_once_never_write_one_stage_twice(tmp_path):
    """Two `distill run --only curate` started together on a fresh workspace: one computes;
    the other finds the result finished (cache hit) or stops with one line naming the
    holder. Never two "computing into" lines for one folder."""
    workspace = tmp_path / "ws"
    args = [sys.executable, "-m", "flows.cli", "run", "--config", "smoke", "--workspace",
            str(workspace), "--only", "curate",
            "--set", "curate.sources=[{kind: toy, num_prompts: 6000, seed: 3}]"]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    logs = [out + err for out, err in outs]
    computing = sum(log.count("curate: computing into") for log in logs)
    assert computing == 1, [log[-2500:] for log in logs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        if proc.returncode != 0:
            assert "stage curate is being computed by" in err and "Traceback" not in out + err
        else:
            assert "computed" in out or "cached" in out
    (folder,) = (workspace / "curate").glob("*/manifest.json")
    store = ArtifactStore(str(workspace))
    assert not list((workspace / ".locks").glob("*.lock"))
    from pipeline.stage import cached_manifest
    from schemas.manifest import PromptSetManifest

    manifest = cached_manifest(store, f"curate/{folder.parent.name}", PromptSetManifest)
    assert manifest is not None
    store.verify_files(f"curate/{folder.parent.name}", manifest.files, full=True)


def test_a_lock_error_is_a_user_facing_error():
    assert issubclass(StageLockedError, TwostepError) and issubclass(LockLostError, TwostepError)
