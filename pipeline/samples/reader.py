"""Reading teacher samples for training: a ``torch`` ``IterableDataset`` over the shards of one
split of a :class:`~schemas.manifest.TeacherSamplesManifest`.

- **Rank- and worker-aware.** Shards are split over ranks (``shards[rank::world_size]`` after
  the epoch's shard shuffle), then a rank's shards over its DataLoader workers, so a rank reads
  the same samples whatever its number of workers. Where a level has fewer shards than
  readers, its readers scan the same shards and keep every n-th sample instead, so small sets
  still feed every rank.
- **Verified.** Each shard is read whole, its size and sha256 are checked against the manifest
  before anything is decoded; a truncated or corrupt shard is an :class:`ArtifactError` naming
  it. Arrays are ``.npy`` loaded with ``allow_pickle=False``.
- **Shuffled.** Shard order per epoch and a sample shuffle buffer, both seeded by
  ``(seed, epoch, rank, worker)``: the same settings give the same order.

A decoded sample is a dict: ``key`` (str), ``meta`` (the sample's JSON record), ``prompt``,
``caption`` ``(L, D)`` float32, ``noise``, ``x_mid``, ``x0`` ``(C, H, W)`` float32, and with
``decode_images=True`` ``image`` ``(3, H, W)`` uint8. :func:`collate_samples` batches them.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.errors import ArtifactError
from pipeline.samples.format import decode_npy
from pipeline.store import ArtifactStore, verify_content
from schemas.manifest import SAMPLE_FIELDS, SampleShard, TeacherSamplesManifest

TENSOR_FIELDS = ("caption", "noise", "x_mid", "x0")
WAY_OUT = "recompute the teacher samples with distill run --only sample_teacher --force"
"""How a damaged shard is repaired: the forced stage writes the same bytes again (the key's
settings and the recorded threads decide them), so downstream caches stay valid."""


class TeacherSampleReader(torch.utils.data.IterableDataset):
    """Iterate the samples of one split; see the module docstring for the contract."""

    def __init__(self, store_root: str, stage_dir: str, shards: list[SampleShard], *,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 0, seed: int = 0,
                 verify: bool = True, decode_images: bool = False, loop: bool = False) -> None:
        super().__init__()
        if not shards:
            raise ArtifactError(f"{store_root}/{stage_dir}: the split holds no shards")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.store_root = store_root
        self.stage_dir = stage_dir
        self.shards = list(shards)
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.verify = verify
        self.decode_images = decode_images
        self.loop = loop
        self.epoch = 0

    @classmethod
    def from_manifest(cls, store: ArtifactStore, manifest: TeacherSamplesManifest, split: str,
                      **kwargs: Any) -> TeacherSampleReader:
        if split not in manifest.splits:
            raise ArtifactError(f"no split {split!r} in the teacher samples "
                                f"(splits: {', '.join(manifest.splits)})")
        return cls(store.root_uri, f"{manifest.stage}/{manifest.key}",
                   manifest.splits[split].shards, **kwargs)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle differently in each epoch (call before iterating, as with samplers)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        store = ArtifactStore(self.store_root)
        if self.loop and self._never_fed(worker, workers):  # it would spin forever
            raise ArtifactError(
                f"{store.uri(self.stage_dir)}: {self.num_samples} sample(s) in "
                f"{len(self.shards)} shard(s) cannot feed {self.world_size} rank(s) x "
                f"{workers} loader worker(s): rank {self.rank}, worker {worker} would never get "
                f"one; use fewer training or loader workers, or sample more prompts")
        epoch = self.epoch
        while True:
            yield from self._epoch(store, epoch, worker, workers)
            if not self.loop:
                return
            epoch += 1

    def _never_fed(self, worker: int, workers: int) -> bool:
        """Whether this (rank, worker) reads no sample in any epoch: the splits of
        :meth:`_epoch` (the same :func:`_split`) worked out from the shards' sizes. With a
        shuffle any shards can be this rank's, so the largest ones bound what it can get;
        without, its own shards decide. (``worker`` is 0 when ``workers`` is 1.)"""
        shards, by_rank = _split(self.shards, self.rank, self.world_size)
        if by_rank:  # ranks keep every n-th sample, its workers every n-th of those
            return len(range(self.rank, self.num_samples, self.world_size)) <= worker
        if self.shuffle_buffer:
            shards = sorted(self.shards, key=lambda s: s.num_samples, reverse=True)[:len(shards)]
        counts = [s.num_samples for s in shards]
        if workers > 1 and len(counts) >= workers:  # workers split the rank's shards
            n = len(range(worker, len(counts), workers))
            return sum(counts[:n] if self.shuffle_buffer else counts[worker::workers]) == 0
        return sum(counts) <= worker  # one reader, or the workers split the rank's samples

    def _epoch(self, store: ArtifactStore, epoch: int, worker: int,
               workers: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{worker}")
        order = list(self.shards)
        if self.shuffle_buffer:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)  # same on every reader
        # Two levels, rank then worker, so a rank reads the same samples whatever its
        # number of DataLoader workers. A level with fewer shards than readers splits samples.
        shards, by_rank = _split(order, self.rank, self.world_size)
        shards, by_worker = _split(shards, worker, workers) if not by_rank else (shards, True)
        stream = (s for shard in shards for s in self._read_shard(store, shard))
        if by_rank:
            stream = _every(stream, self.rank, self.world_size)
        if by_worker:
            stream = _every(stream, worker, workers)
        if not self.shuffle_buffer:
            yield from stream
            return
        buffer: list[dict[str, Any]] = []
        for sample in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            yield buffer[i]
            buffer[i] = sample
        rng.shuffle(buffer)
        yield from buffer

    def _read_shard(self, store: ArtifactStore, shard: SampleShard) -> Iterator[dict[str, Any]]:
        where = store.uri(self.stage_dir, shard.path)
        try:
            data = store.read_bytes(self.stage_dir, shard.path)
        except FileNotFoundError:
            raise ArtifactError(f"{where}: listed in the manifest but missing; "
                                f"{WAY_OUT}") from None
        if self.verify:
            verify_content(where, data, shard, way_out=WAY_OUT)
        count = 0
        try:
            for key, members in _group_by_key(data):
                yield self._decode(key, members, where)
                count += 1
        except (tarfile.TarError, ValueError, OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{where}: unreadable sample after {count} ({exc}); "
                                f"{WAY_OUT}") from None
        if count != shard.num_samples:
            raise ArtifactError(f"{where}: {count} samples, the manifest says "
                                f"{shard.num_samples}; {WAY_OUT}")

    def _decode(self, key: str, members: dict[str, bytes], where: str) -> dict[str, Any]:
        missing = [f for f in SAMPLE_FIELDS if f not in members]
        if missing:
            raise ArtifactError(f"{where}: sample {key} lacks {', '.join(missing)}")
        meta = json.loads(members["json"])
        sample: dict[str, Any] = {"key": key, "meta": meta, "prompt": meta["prompt"]}
        for name in TENSOR_FIELDS:
            array = decode_npy(members[f"{name}.npy"])
            sample[name] = torch.from_numpy(array.astype(np.float32, copy=False))
        if self.decode_images:
            image = np.asarray(Image.open(io.BytesIO(members["png"])).convert("RGB"))
            sample["image"] = torch.from_numpy(image.copy()).permute(2, 0, 1)
        return sample


def _split(shards: list[SampleShard], me: int, n: int) -> tuple[list[SampleShard], bool]:
    """This reader's shards, and whether samples must be split instead (too few shards)."""
    if n == 1:
        return shards, False
    if len(shards) >= n:
        return shards[me::n], False
    return shards, True


def _every(stream: Iterator[dict[str, Any]], me: int, n: int) -> Iterator[dict[str, Any]]:
    return (s for i, s in enumerate(stream) if i % n == me)


def _group_by_key(data: bytes) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {field: bytes})`` in tar order; a sample's members are contiguous."""
    key: str | None = None
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name_key, _, field = member.name.partition(".")
            handle = tar.extractfile(member)
            if handle is None:
                continue
            if name_key != key and key is not None:
                yield key, members
                members = {}
            key = name_key
            members[field] = handle.read()
    if key is not None:
        yield key, members


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``noise``, ``x_mid``, ``x0`` (and ``image``) to ``(B, ...)``; captions stay a list
    of ``(L_i, D)`` tensors (lengths differ); keys, prompts and meta stay lists."""
    batch: dict[str, Any] = {
        "key": [s["key"] for s in samples],
        "prompt": [s["prompt"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "caption": [s["caption"] for s in samples],
    }
    for name in ("noise", "x_mid", "x0", "image"):
        if name in samples[0]:
            batch[name] = torch.stack([s[name] for s in samples])
    return batch
