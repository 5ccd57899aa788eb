"""A workspace on a small filesystem that fills up, during teacher sampling and during a
training checkpoint: one line saying the disk is full and where, no manifest, and a rerun
after space is freed completes. The filesystem is a real tmpfs mounted by the test (root
only: elsewhere the test is skipped)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ArtifactError
from pipeline.samples.reader import TeacherSampleReader
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore, is_disk_full
from stages import curate, sample_teacher, train_init

pytestmark = pytest.mark.usefixtures("ray_local")

SMALL = ["curate.sources=[{kind: toy, num_prompts: 70, seed: 5}]", "curate.eval_fraction=0.1",
         "sample_teacher.samples_per_prompt=2", "sample_teacher.samples_per_shard=16",
         "sample_teacher.batch_size=16", "sample_teacher.num_actors=1",
         "sample_teacher.cpus_per_actor=1", "teacher.dtype=float32"]


@pytest.fixture
def small_disk(tmp_path):
    """A 256 MiB tmpfs at ``tmp_path/disk``."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all free space of ``disk`` but ``leave`` bytes."""
    filler = disk / "filler.bin"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as handle:
        handle.truncate(0)
        remaining = max(free - leave, 0)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            handle.write(block[:min(len(block), remaining)])
            remaining -= min(len(block), remaining)
    return filler


def test_is_disk_full_sees_through_wrappers():
    import errno

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    wrapped = RuntimeError("training workers failed: OSError: [Errno 28] No space left on "
                           "device: '/ws/x'")
    assert is_disk_full(wrapped)
    try:
        try:
            raise OSError(errno.EDQUOT, "quota")
        except OSError as inner:
            raise ValueError("while writing") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


@pytest.mark.soak
def test_a_full_disk_during_sampling_and_during_a_checkpoint(small_disk):
    workspace = small_disk / "ws"
    cfg = load_config("smoke", SMALL, workspace=str(workspace))
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest

    # Sampling: room for a few of the ten shards (each ~0.5 MiB).
    filler = _fill(small_disk, leave=int(1.6 * 2**20))
    with pytest.raises(ArtifactError) as caught:
        run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})
    message = str(caught.value)
    assert "\n" not in message and "no space left on the device" in message
    assert str(workspace / "sample_teacher") in message and "rerun" in message
    (stage_dir,) = (workspace / "sample_teacher").iterdir()
    assert not (stage_dir / "manifest.json").exists()
    kept = sorted(p.name for p in stage_dir.glob("*.tar"))
    filler.unlink()
    done = run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})
    assert not done.cached and done.manifest.counts["shards_reused"] == len(kept)
    keys = [s["key"] for s in TeacherSampleReader.from_manifest(store, done.manifest, "train")]
    assert len(keys) == len(set(keys)) == done.manifest.splits["train"].num_samples

    # Training: the first checkpoint (student, EMA, optimizer: ~60 MiB) does not fit.
    inputs = {"sample_teacher": done.manifest}
    filler = _fill(small_disk, leave=12 * 2**20)
    with pytest.raises(ArtifactError) as caught:
        run_stage(train_init.STAGE, cfg, store, inputs)
    message = str(caught.value)
    assert "\n" not in message and "no space left on the device" in message
    assert str(workspace / "train_init") in message
    (train_dir,) = (workspace / "train_init").iterdir()
    assert not (train_dir / "manifest.json").exists()
    filler.unlink()
    trained = run_stage(train_init.STAGE, cfg, store, inputs)
    assert not trained.cached and trained.manifest.counts["steps"] == cfg.train_init.steps
    store.verify_files(trained.stage_dir, trained.manifest.files, full=True)
