"""Sample keys, noise seeds and the shard plan are deterministic; arrays never unpickle."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.samples.format import decode_npy, plan_shards, sample_key, sample_seed


def test_seed_depends_only_on_global_seed_prompt_and_index():
    assert sample_seed(0, "abc", 1) == sample_seed(0, "abc", 1)
    seeds = {sample_seed(s, p, k) for s in (0, 1) for p in ("abc", "abd") for k in range(3)}
    assert len(seeds) == 12
    assert all(0 <= s < 2**63 for s in seeds)


def test_plan_cuts_prompt_major_samples_into_fixed_size_shards():
    units = plan_shards("train", ["a", "b", "c"], ["pa", "pb", "pc"], 3, seed=7,
                        samples_per_shard=4)
    assert [u.path for u in units] == ["train-000000.tar", "train-000001.tar",
                                       "train-000002.tar"]
    assert [len(u.samples) for u in units] == [4, 4, 1]
    keys = [s.key for u in units for s in u.samples]
    assert keys[:4] == [sample_key("a", 0), sample_key("a", 1), sample_key("a", 2),
                        sample_key("b", 0)]
    assert len(set(keys)) == 9 and all("." not in k for k in keys)
    assert plan_shards("train", ["a", "b", "c"], ["pa", "pb", "pc"], 3, 7, 4) == units


def test_npy_with_pickled_objects_is_refused():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_npy(buffer.getvalue())
