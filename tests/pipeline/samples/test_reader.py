"""The shard reader: every sample exactly once across ranks and workers, seeded shuffles,
verification that names the broken shard."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.samples.reader import TeacherSampleReader, collate_samples
from tests.pipeline.samples.conftest import write_sample_set


def _keys(reader) -> list[str]:
    return [s["key"] for s in reader]


def test_reads_every_sample_with_tensors(sample_set):
    store, manifest = sample_set
    samples = list(TeacherSampleReader.from_manifest(store, manifest, "train",
                                                     decode_images=True))
    assert len(samples) == 20
    s = samples[0]
    assert s["caption"].shape == (5, 8) and s["x0"].dtype == torch.float32
    assert s["noise"].shape == s["x_mid"].shape == (3, 4, 4)
    assert s["image"].shape == (3, 4, 4) and s["image"].dtype == torch.uint8
    assert s["meta"]["prompt_id"] == s["key"].split("-")[0]
    batch = collate_samples(samples[:3])
    assert batch["x0"].shape == (3, 3, 4, 4) and len(batch["caption"]) == 3


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_ranks_partition_the_samples(sample_set, world_size):
    """5 shards: 2 ranks split by shard; 7 ranks (more readers than shards) split by sample."""
    store, manifest = sample_set
    everything = _keys(TeacherSampleReader.from_manifest(store, manifest, "train"))
    parts = [_keys(TeacherSampleReader.from_manifest(store, manifest, "train", rank=r,
                                                     world_size=world_size, shuffle_buffer=4))
             for r in range(world_size)]
    assert sorted(k for p in parts for k in p) == sorted(everything)
    assert all(parts)


def test_dataloader_workers_partition_too(sample_set):
    store, manifest = sample_set
    reader = TeacherSampleReader.from_manifest(store, manifest, "train", rank=1, world_size=2)
    alone = sorted(_keys(reader))
    loader = torch.utils.data.DataLoader(reader, batch_size=3, num_workers=2,
                                         collate_fn=collate_samples)
    assert sorted(k for b in loader for k in b["key"]) == alone


def test_shuffle_is_seeded_and_changes_per_epoch(sample_set):
    store, manifest = sample_set

    def order(seed, epoch):
        reader = TeacherSampleReader.from_manifest(store, manifest, "train", shuffle_buffer=8,
                                                   seed=seed)
        reader.set_epoch(epoch)
        return _keys(reader)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert sorted(order(0, 1)) == sorted(order(1, 0))


def test_loop_repeats_epochs(sample_set):
    store, manifest = sample_set
    reader = TeacherSampleReader.from_manifest(store, manifest, "train", loop=True)
    it = iter(reader)
    assert len([next(it) for _ in range(45)]) == 45


def test_looping_reader_without_samples_fails_instead_of_spinning(tmp_path):
    """One sample, two ranks: rank 1 reads nothing each epoch; looping would never yield."""
    store, manifest = write_sample_set(tmp_path / "ws", n_prompts=1, per_prompt=1)
    first = iter(TeacherSampleReader.from_manifest(store, manifest, "train", rank=0,
                                                   world_size=2, loop=True))
    assert [next(first)["key"] for _ in range(3)] == [next(iter(_keys(
        TeacherSampleReader.from_manifest(store, manifest, "train"))))] * 3
    second = TeacherSampleReader.from_manifest(store, manifest, "train", rank=1, world_size=2,
                                               loop=True)
    with pytest.raises(ArtifactError, match=r"1 sample\(s\) in 1 shard\(s\) cannot feed 2 "
                                            r"rank\(s\) x 1 loader worker\(s\): rank 1, "
                                            r"worker 0 would never get one"):
        next(iter(second))


def test_a_loader_worker_without_samples_in_one_epoch_is_not_refused(tmp_path):
    """Shards of 4, 4 and 1 samples, shuffled: rank 1 of 2 holds one shard an epoch, and its
    loader worker 1 reads nothing in the epochs where that is the 1-sample shard (epochs 1-3)
    and 2 samples in the others. Only a reader that can never get a sample is refused."""
    store, manifest = write_sample_set(tmp_path / "ws", n_prompts=9, per_prompt=1, per_shard=4)
    assert [s.num_samples for s in manifest.splits["train"].shards] == [4, 4, 1]
    reader = TeacherSampleReader.from_manifest(store, manifest, "train", rank=1, world_size=2,
                                               shuffle_buffer=2, loop=True)
    loader = torch.utils.data.DataLoader(reader, batch_size=1, num_workers=2,
                                         collate_fn=collate_samples)
    batches = iter(loader)
    assert len([next(batches) for _ in range(12)]) == 12


def test_corrupt_shard_is_named(sample_set):
    store, manifest = sample_set
    shard = manifest.splits["train"].shards[2]
    path = store.path("sample_teacher/k", shard.path)
    data = bytearray(open(path, "rb").read())
    data[700] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ArtifactError, match=f"{shard.path}: sha256 does not match"):
        _keys(TeacherSampleReader.from_manifest(store, manifest, "train"))


def test_truncated_shard_is_named(sample_set):
    store, manifest = sample_set
    shard = manifest.splits["train"].shards[1]
    path = store.path("sample_teacher/k", shard.path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=f"{shard.path}: size .* bytes, manifest says"):
        _keys(TeacherSampleReader.from_manifest(store, manifest, "train"))


def test_missing_shard_and_empty_split_are_clear(sample_set):
    store, manifest = sample_set
    shard = manifest.splits["train"].shards[0]
    store.fs.rm(store.path("sample_teacher/k", shard.path))
    with pytest.raises(ArtifactError, match=f"{shard.path}: listed in the manifest but missing"):
        _keys(TeacherSampleReader.from_manifest(store, manifest, "train"))
    with pytest.raises(ArtifactError, match="no split 'eval'"):
        TeacherSampleReader.from_manifest(store, manifest, "eval")
    with pytest.raises(ArtifactError, match="holds no shards"):
        TeacherSampleReader(store.root_uri, "sample_teacher/k", [])
