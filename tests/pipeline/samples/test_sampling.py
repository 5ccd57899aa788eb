"""The sampling actor pool's plan: how many actors with how many threads, from the cluster."""

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.samples.sampling import (
    MAX_THREADS_PER_ACTOR,
    ActorPlan,
    plan_actor_pool,
    split_candidates,
)


@pytest.mark.parametrize(("node_cpus", "gpus", "shards", "actors", "cpus", "expected"), [
    # auto on one node: one actor with every core, up to MAX_THREADS_PER_ACTOR per actor
    ([2], 0, 30, "auto", "auto", ActorPlan(1, 2, gpu=False)),
    ([16], 0, 30, "auto", "auto", ActorPlan(1, 16, gpu=False)),
    ([64], 0, 30, "auto", "auto", ActorPlan(4, 16, gpu=False)),
    ([20], 0, 30, "auto", "auto", ActorPlan(2, 10, gpu=False)),
    # a cluster: every node split on its own
    ([8, 8, 8], 0, 30, "auto", "auto", ActorPlan(3, 8, gpu=False)),
    # a fixed count splits the node that many ways; a fixed size packs actors of that size
    ([2], 0, 30, 2, "auto", ActorPlan(2, 1, gpu=False)),
    ([8], 0, 30, 3, "auto", ActorPlan(3, 2, gpu=False)),
    ([8], 0, 30, "auto", 2, ActorPlan(4, 2, gpu=False)),
    ([8], 0, 30, 2, 2, ActorPlan(2, 2, gpu=False)),
    ([2, 4], 0, 30, "auto", 2, ActorPlan(3, 2, gpu=False)),
    # fewer shards than actors: the left-out actors' cores go to the others (auto threads)
    ([64], 0, 1, "auto", "auto", ActorPlan(1, 16, gpu=False)),
    ([8], 0, 1, 4, "auto", ActorPlan(1, 8, gpu=False)),
    ([8], 0, 2, "auto", 1, ActorPlan(2, 1, gpu=False)),
    # GPUs: one actor per GPU, the CPUs shared among them
    ([32], 4, 30, "auto", "auto", ActorPlan(4, 8, gpu=True)),
    ([32], 4, 2, "auto", "auto", ActorPlan(2, 8, gpu=True)),
    ([32], 4, 30, 1, 4, ActorPlan(1, 4, gpu=True)),
])
def test_plan_actor_pool(node_cpus, gpus, shards, actors, cpus, expected):
    plan = plan_actor_pool(node_cpus, gpus, shards, actors, cpus)
    assert plan == expected
    # never an actor the cluster cannot place
    if not plan.gpu:
        assert plan.actors * plan.cpus_per_actor <= sum(node_cpus)
        assert plan.cpus_per_actor <= max(node_cpus)
    assert plan.cpus_per_actor <= max(MAX_THREADS_PER_ACTOR, max(node_cpus))


def test_an_actor_larger_than_any_node_is_a_config_error():
    with pytest.raises(ConfigError, match=r"cpus_per_actor=8 but the largest Ray node has 4"):
        plan_actor_pool([4, 4], 0, 10, "auto", 8)


def test_config_takes_auto_or_a_positive_count():
    from pydantic import ValidationError

    from schemas.config import SampleTeacherConfig

    assert SampleTeacherConfig().num_actors == "auto"
    assert SampleTeacherConfig(num_actors=3, cpus_per_actor=2).cpus_per_actor == 2
    with pytest.raises(ValidationError, match="num_actors must be >= 1 or auto"):
        SampleTeacherConfig(num_actors=0)


@pytest.mark.parametrize(("cpus", "expected"), [(1, [1]), (2, [2, 1]), (16, [16, 1]),
                                                 (64, [16, 4])])
def test_calibration_tries_the_default_and_a_many_actor_split(cpus, expected):
    assert split_candidates(cpus) == expected


def _settings(compute_dtype=None):
    from pipeline.samples.sampling import SamplingSettings

    return SamplingSettings(batch_size=4, dtype="auto", device="gpu", threads_per_actor=1,
                            compute_dtype=compute_dtype)


def test_the_compute_dtype_the_actors_report_is_kept_for_a_resume(tmp_path, caplog):
    import logging

    from pipeline.samples.sampling import read_settings, record_compute_dtype, write_settings
    from pipeline.store import ArtifactStore

    store, log = ArtifactStore(str(tmp_path)), logging.getLogger("test")
    write_settings(store, "out", _settings())  # as written before the first shard
    written = [{"path": "train-000000.tar", "compute_dtype": "bfloat16"}]
    assert record_compute_dtype(store, "out", written, "auto", log) == "bfloat16"
    assert read_settings(store, "out").compute_dtype == "bfloat16"
    # a resumed run that writes nothing still knows what the shards were computed in
    assert record_compute_dtype(store, "out", [], "auto", log) == "bfloat16"
    assert not caplog.records


def test_a_folder_without_a_recorded_compute_dtype_records_none(tmp_path):
    import logging

    from pipeline.samples.sampling import record_compute_dtype, write_settings
    from pipeline.store import ArtifactStore

    store = ArtifactStore(str(tmp_path))
    write_settings(store, "out", _settings())
    assert record_compute_dtype(store, "out", [], "auto", logging.getLogger("test")) is None


def test_disagreeing_or_unasked_compute_dtypes_are_recorded_with_a_warning(tmp_path, caplog):
    import logging

    from pipeline.samples.sampling import record_compute_dtype, write_settings
    from pipeline.store import ArtifactStore

    store, log = ArtifactStore(str(tmp_path)), logging.getLogger("test")
    write_settings(store, "mixed", _settings("bfloat16"))
    assert record_compute_dtype(store, "mixed", [{"compute_dtype": "float16"}], "auto",
                                log) == "bfloat16, float16"
    assert "different dtypes (bfloat16, float16)" in caplog.text
    caplog.clear()
    write_settings(store, "kept", _settings())
    assert record_compute_dtype(store, "kept", [{"compute_dtype": "float32"}], "bfloat16",
                                log) == "float32"
    assert "teacher.dtype is bfloat16, the teacher computed in float32" in caplog.text


@pytest.mark.parametrize(("configured", "computed"), [
    ("auto", "float32"),  # auto on a CPU actor: the teacher's own float32 weights
    ("bfloat16", "bfloat16"),  # bf16 autocast over float32 weights counts as bfloat16
])
def test_a_sampling_actor_reports_the_dtype_it_computes_in(tmp_path, configured, computed):
    from pipeline.samples.sampling import ShardJob, ShardSampler
    from schemas.config import TeacherConfig

    job = ShardJob(teacher=TeacherConfig(kind="toy", dtype=configured), record={},
                   sigma_mid=0.5, storage_dtype="float32", batch_size=2,
                   store_root=str(tmp_path), out_dir="out")
    threads = torch.get_num_threads()
    try:
        sampler = ShardSampler(job, threads=threads)  # an actor sets its threads
        assert sampler.ready() is None
        assert sampler.compute_dtype == computed
    finally:
        torch.set_num_threads(threads)
