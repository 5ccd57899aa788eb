"""Faults in teacher sampling (``sample_teacher``), in process on the toy teacher:

- a sampling actor SIGKILLed mid-run: the stage replaces it, retries the shard, finishes in the
  same call with the bytes of an uninterrupted run;
- the same key means the same bytes: ``batch_size`` is in the key, and a resumed folder is
  written with the threads its shards were written with (or refused, naming them);
- damaged shards in a finished folder (truncated, bytes flipped, deleted): every consumer
  names the shard and the way out, and the way out (``--force``) repairs it with the same
  content hash, curate untouched; damaged shards in an unfinished folder are not reused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ArtifactError
from pipeline.samples.reader import TeacherSampleReader
from pipeline.samples.sampling import SETTINGS_FILE
from pipeline.stage import cached_manifest, compute_key, content_hash, run_stage
from pipeline.store import TMP_MARKER, ArtifactStore
from schemas.manifest import TeacherSamplesManifest
from stages import curate, sample_teacher
from tests.reliability.conftest import snapshot

pytestmark = pytest.mark.usefixtures("ray_local")

# 25 train + 5 eval prompts, one sample each, in 11 shards of at most 3, on a fixed split
# (2 actors x 1 thread), so that every run here writes the same bytes.
SMALL = ["curate.sources=[{kind: toy, num_prompts: 30, seed: 5}]", "curate.eval_fraction=0.2",
         "sample_teacher.samples_per_shard=3", "sample_teacher.batch_size=3",
         "sample_teacher.num_actors=2", "sample_teacher.cpus_per_actor=1"]
SHARDS = 11
WAY_OUT = "distill run --only sample_teacher --force"


def _cfg(workspace: Path, *extra: str):
    return load_config("smoke", [*SMALL, *extra], workspace=str(workspace))


def _run(workspace: Path, *extra: str, force: bool = False):
    cfg = _cfg(workspace, *extra)
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest
    return store, run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts}, force=force)


def _shards(manifest: TeacherSamplesManifest) -> dict[str, str]:
    return {s.path: s.sha256 for split in manifest.splits.values() for s in split.shards}


def _keys(store, manifest) -> list[str]:
    return [s["key"] for split in manifest.splits
            for s in TeacherSampleReader.from_manifest(store, manifest, split)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its workspace and manifest (tests work on copies)."""
    workspace = tmp_path_factory.mktemp("reference") / "ws"
    _, outcome = _run(workspace)
    return workspace, outcome.manifest


def _copy(reference, tmp_path: Path) -> tuple[Path, Path, TeacherSamplesManifest]:
    source, manifest = reference
    workspace = tmp_path / "ws"
    shutil.copytree(source, workspace)
    return workspace, workspace / "sample_teacher" / manifest.key, manifest


def _kill_one_sampler_when(stage_glob: str, workspace: Path, killed: list[object],
                           stop: threading.Event) -> None:
    """Once a first shard exists, SIGKILL one alive ShardSampler actor's process of this
    session's Ray (the address matters: other Ray instances may run on the machine)."""
    import ray
    from ray.util.state import list_actors

    try:
        address = ray.get_runtime_context().gcs_address
        while not stop.is_set():
            if list(workspace.glob(stage_glob)):
                actors = list_actors(address=address, filters=[
                    ("class_name", "=", "ShardSampler"), ("state", "=", "ALIVE")],
                    raise_on_missing_output=False)
                pids = [a.pid for a in actors if a.pid]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.05)
    except Exception as exc:  # reported by the test, not lost in the thread
        killed.append(exc)


def test_a_killed_actor_is_replaced_and_its_shard_retried_in_the_same_run(
        reference, tmp_path, caplog):
    workspace = tmp_path / "ws"
    killed: list[object] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_sampler_when,
                              args=("sample_teacher/*/train-*.tar", workspace, killed, stop))
    killer.start()
    try:
        with caplog.at_level("INFO"):
            store, outcome = _run(workspace)
    finally:
        stop.set()
        killer.join()
    assert killed and isinstance(killed[0], int), f"no actor killed: {killed}"
    retries = [r.getMessage() for r in caplog.records if "on a fresh actor" in r.getMessage()]
    assert retries and all("died (" in r and "retry 1 of 2" in r for r in retries), retries
    m = outcome.manifest
    assert not outcome.cached and m.counts["shards_written"] == m.counts["shards"] == SHARDS
    stage_dir = f"sample_teacher/{m.key}"
    store.read_manifest(stage_dir, TeacherSamplesManifest, verify="sha256")
    keys = _keys(store, m)
    assert len(keys) == len(set(keys)) == m.counts["train_samples"] + m.counts["eval_samples"]
    assert not [p for p in (workspace / stage_dir).iterdir() if TMP_MARKER in p.name]
    assert _shards(m) == _shards(reference[1])  # the bytes of an uninterrupted run
    assert content_hash(m) == content_hash(reference[1])


def test_batch_size_is_in_the_key_the_actor_split_is_not(tmp_path):
    """A sample's bytes depend on its batch (84 of 1,380 arrays differed between batch 16 and
    32 on the smoke preset): two batch sizes must never share a folder."""
    spec = sample_teacher.STAGE
    keys = {extra: compute_key(spec, load_config("smoke", list(extra), str(tmp_path)), {})
            for extra in [(), ("sample_teacher.batch_size=16",),
                          ("sample_teacher.num_actors=1", "sample_teacher.cpus_per_actor=1"),
                          ("sample_teacher.num_actors=2", "sample_teacher.cpus_per_actor=2")]}
    assert len({keys[()], keys[("sample_teacher.batch_size=16",)]}) == 2
    assert len(set(keys.values()) - {keys[("sample_teacher.batch_size=16",)]}) == 1


def test_a_resume_with_other_threads_writes_with_the_recorded_ones(reference, tmp_path, caplog):
    """Killed half way (no manifest, half the shards), resumed with 1 actor x 2 threads: the
    stage keeps the recorded 1 thread per actor, so no folder mixes thread counts."""
    workspace, folder, ref = _copy(reference, tmp_path)
    (folder / "manifest.json").unlink()
    gone = sorted(_shards(ref))[::2]
    for name in gone:
        (folder / name).unlink()
    record = (folder / SETTINGS_FILE).read_text()
    assert json.loads(record)["threads_per_actor"] == 1
    with caplog.at_level("INFO"):
        _, outcome = _run(workspace, "sample_teacher.num_actors=1",
                          "sample_teacher.cpus_per_actor=2")
    assert "1 thread(s) per actor as the shards already written, not cpus_per_actor=2" \
        in caplog.text
    assert "on 1 CPU actor(s) x 1 thread(s)" in caplog.text
    m = outcome.manifest
    assert m.counts["shards_reused"] == SHARDS - len(gone)
    assert m.counts["shards_written"] == len(gone)
    assert _shards(m) == _shards(ref) and content_hash(m) == content_hash(ref)
    assert (folder / SETTINGS_FILE).read_text() == record


def test_recorded_settings_this_cluster_cannot_reproduce_are_refused(reference, tmp_path):
    workspace, folder, ref = _copy(reference, tmp_path)
    (folder / "manifest.json").unlink()
    (folder / sorted(_shards(ref))[0]).unlink()
    record = json.loads((folder / SETTINGS_FILE).read_text())
    (folder / SETTINGS_FILE).write_text(json.dumps({**record, "threads_per_actor": 8}))
    before = snapshot(folder)
    with pytest.raises(ArtifactError) as info:
        _run(workspace)
    message = str(info.value)
    assert "\n" not in message
    assert str(folder) in message
    assert "8 thread(s) per actor" in message and WAY_OUT in message
    assert snapshot(folder) == before  # nothing removed or written


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside an array, same size
    path.write_bytes(bytes(data))


FAULTS = {"truncate": _truncate, "flip": _flip, "delete": Path.unlink}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_shard_is_named_with_the_way_out_which_repairs_it(
        fault, reference, tmp_path, caplog):
    workspace, folder, ref = _copy(reference, tmp_path)
    store = ArtifactStore(str(workspace))
    stage_dir = f"sample_teacher/{ref.key}"
    curate_dir = workspace / "curate" / ref.inputs[0].key
    curate_before = snapshot(curate_dir)
    shard = sorted(_shards(ref))[3]
    FAULTS[fault](folder / shard)

    # the trainers' and evaluation's reader: one line naming the shard and the way out
    manifest = store.read_manifest(stage_dir, TeacherSamplesManifest, verify="none")
    with pytest.raises(ArtifactError) as info:
        _keys(store, manifest)
    message = str(info.value)
    expected = {"truncate": "bytes, manifest says", "flip": "sha256 does not match",
                "delete": "listed in the manifest but missing"}[fault]
    assert "\n" not in message and f"{folder / shard}: " in message
    assert expected in message and message.endswith(WAY_OUT)
    # the cache check (size only): a changed size or a missing file is not a cache hit, so
    # the next `distill run` resumes the folder; a same-size change is left to the reader
    with caplog.at_level("WARNING"):
        cached = cached_manifest(store, stage_dir, TeacherSamplesManifest)
    if fault == "flip":
        assert cached is not None
    else:
        assert cached is None and f"{folder / shard}: " in caplog.text

    # the way out: recomputes the same bytes (downstream caches stay valid), curate untouched
    _, repaired = _run(workspace, force=True)
    assert not repaired.cached
    assert content_hash(repaired.manifest) == content_hash(ref)
    assert _shards(repaired.manifest) == _shards(ref)
    assert snapshot(curate_dir) == curate_before
    assert sorted(_keys(store, repaired.manifest)) == sorted(_keys(store, ref))


def test_an_unfinished_folder_never_reuses_a_damaged_shard(reference, tmp_path, caplog):
    """Killed before the manifest: a truncated shard, a flipped one, one without its checksum
    and a stale temporary. The rerun rewrites the three and removes the temporary."""
    workspace, folder, ref = _copy(reference, tmp_path)
    (folder / "manifest.json").unlink()
    names = sorted(_shards(ref))
    _truncate(folder / names[0])
    _flip(folder / names[5])
    (folder / f"{names[9]}.sha256").unlink()
    (folder / f"{names[2]}{TMP_MARKER}123-abcdef12").write_bytes(b"half a shard")
    with caplog.at_level("INFO"):
        _, outcome = _run(workspace)
    m = outcome.manifest
    assert m.counts["shards_rejected"] == 3 and m.counts["shards_written"] == 3
    assert m.counts["shards_reused"] == SHARDS - 3
    (line,) = [r.getMessage() for r in caplog.records if "written again" in r.getMessage()]
    assert line.startswith("sample_teacher: 3 shard(s) damaged or unverifiable removed")
    assert all(names[i] in line for i in (0, 5, 9))
    assert "1 stale temporary file(s) removed" in caplog.text
    assert _shards(m) == _shards(ref) and content_hash(m) == content_hash(ref)
    assert not [p for p in folder.iterdir() if TMP_MARKER in p.name]


def test_a_shard_whose_actors_keep_dying_stops_the_stage_after_the_retries(
        tmp_path, caplog, monkeypatch):
    """Every attempt's actor dies (a crash in the actor): 1 + MAX_SHARD_RETRIES attempts,
    one log line per retry, then one line."""
    import ray

    from pipeline.samples import sampling
    from pipeline.samples.format import plan_shards
    from schemas.config import TeacherConfig

    class DyingSampler:  # local: pickled by value, so the actors run it
        def __init__(self, job, threads):
            pass

        def ready(self):
            return None

        def write(self, unit):
            os._exit(1)

    job = sampling.ShardJob(teacher=TeacherConfig(), record={}, sigma_mid=0.75,
                            storage_dtype="float32", batch_size=1, store_root=str(tmp_path),
                            out_dir="sample_teacher/k")
    units = plan_shards("train", ["p"], ["a red circle"], 1, 0, 1)
    plan = sampling.ActorPlan(1, 1, gpu=False)
    monkeypatch.setattr(sampling, "_actor_class",
                        lambda plan: ray.remote(num_cpus=1)(DyingSampler))
    with caplog.at_level("INFO"), pytest.raises(ArtifactError) as info:
        sampling.sample_on_actor_pool(job, units, plan, sampling.logging.getLogger("t"),
                                      lambda fraction: None)
    retries = [r.getMessage() for r in caplog.records if "on a fresh actor" in r.getMessage()]
    assert [r.split("; ")[-1] for r in retries] == ["retry 1 of 2 on a fresh actor",
                                                   "retry 2 of 2 on a fresh actor"]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("sample_teacher: a sampling actor died writing train-000000.tar "
                              "(attempt 3 of 3) (")
    assert message.endswith("complete shards are kept, rerun to resume")


def test_an_actor_killed_for_memory_names_the_batch_size():
    import ray

    from pipeline.samples.sampling import death_message

    oom = ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on "
                                          "memory.\nMemory on the node was 7.5GB / 8GB")
    message = death_message(oom, "writing train-000004.tar (attempt 3 of 3)")
    assert message == ("sample_teacher: a sampling actor was killed for running out of memory "
                       "writing train-000004.tar (attempt 3 of 3); lower "
                       "sample_teacher.batch_size (a new batch size is a new sample folder) or "
                       "give the actors more memory")
    died = ray.exceptions.ActorDiedError()
    died.error_msg = ("The actor died unexpectedly before finishing this task.\n\tpid: 7\nThe "
                      "actor is dead because its worker process has died. Worker exit type: "
                      "NODE_OUT_OF_MEMORY Worker exit detail: Task was killed due to the node "
                      "running low on memory.")
    assert "out of memory" in death_message(died, "writing x")
    died.error_msg = ("The actor died unexpectedly before finishing this task.\nWorker exit "
                      "type: SYSTEM_ERROR ... (1) the process was killed by the OOM killer")
    assert death_message(died, "writing x") == (
        "sample_teacher: a sampling actor died writing x (The actor died unexpectedly before "
        "finishing this task.); complete shards are kept, rerun to resume")
