"""A small teacher-sample set written without a teacher (random arrays), for reader tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import webdataset as wds

from pipeline.samples.format import encode_sample, plan_shards
from pipeline.store import ArtifactStore
from schemas.manifest import SampleShard, SampleSplit, TeacherInfo, TeacherSamplesManifest

SIGMAS = [1.0, 0.75, 0.0]


def write_sample_set(root, n_prompts: int = 10, per_prompt: int = 2, per_shard: int = 4):
    store = ArtifactStore(str(root))
    stage_dir = "sample_teacher/k"
    ids = [f"{i:016x}" for i in range(n_prompts)]
    units = plan_shards("train", ids, [f"prompt {i}" for i in range(n_prompts)], per_prompt,
                        seed=0, samples_per_shard=per_shard)
    shards = []
    for unit in units:
        with store.open_atomic(stage_dir, unit.path) as handle:
            writer = wds.TarWriter(handle, mtime=0.0, encoder=False)
            for s in unit.samples:
                g = torch.Generator().manual_seed(s.seed % 2**31)
                t = [torch.randn(3, 4, 4, generator=g) for _ in range(3)]
                writer.write(encode_sample(s, {"split": "train"}, torch.randn(5, 8, generator=g),
                                           *t, np.zeros((4, 4, 3), np.uint8), "float32"))
            writer.close()
        shards.append(SampleShard(path=unit.path, num_samples=len(unit.samples),
                                  size=store.fs.size(store.path(stage_dir, unit.path)),
                                  sha256=store.sha256(stage_dir, unit.path)))
    manifest = TeacherSamplesManifest(
        key="k", created_at="2026-01-01T00:00:00Z", code_version="test", config={},
        splits={"train": SampleSplit(num_prompts=n_prompts, num_samples=n_prompts * per_prompt,
                                     shards=shards)},
        teacher=TeacherInfo(kind="toy", teacher_id="toy:test@0", steps=2, sigmas=SIGMAS,
                            sigma_mid=0.75, latent_shape=[3, 4, 4], caption_dim=8, height=4,
                            width=4),
        storage_dtype="float32")
    store.write_manifest(stage_dir, manifest)
    return store, manifest


@pytest.fixture
def sample_set(tmp_path):
    return write_sample_set(tmp_path / "ws")
