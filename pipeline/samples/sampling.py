"""Teacher sampling into shards on a Ray actor pool, resumable.

A :class:`ShardSampler` (one per Ray actor; the teacher loads once, lazily) samples a whole
shard in batches and writes it under a temporary name, renamed when complete
(:meth:`ArtifactStore.open_atomic`). A killed run therefore leaves only complete shards plus
temporaries; :func:`resume_plan` removes the temporaries and keeps every complete shard, so
each key is written exactly once. :func:`sample_on_actor_pool` runs the shards still to do.
"""

from __future__ import annotations

import logging
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ArtifactError, ConfigError, TwostepError
from pipeline.samples.format import ShardUnit, encode_sample
from pipeline.store import TMP_MARKER, ArtifactStore
from schemas.config import TeacherConfig
from schemas.manifest import SAMPLE_FIELDS

_PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class ShardJob:
    """What every sampling actor needs: the teacher, what each sample records, where shards
    go. ``record`` is merged into every sample's JSON (teacher id, sigmas, sigma_mid)."""

    teacher: TeacherConfig
    record: dict[str, Any]
    sigma_mid: float
    storage_dtype: str
    batch_size: int
    store_root: str
    out_dir: str


class ShardSampler:
    """Samples and writes whole shards with ``threads`` torch threads (a loading problem comes
    back as a message from :meth:`write` instead of a dead actor)."""

    def __init__(self, job: ShardJob, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.job = job
        self.store = ArtifactStore(job.store_root)
        self._teacher = None

    def _load(self):
        if self._teacher is None:
            import torch

            from pipeline.teachers import load_teacher

            cfg = self.job.teacher
            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
            # On CPU a low-precision dtype means fp32 weights under autocast (bf16 matmuls are
            # faster on AVX512-BF16 CPUs; bf16 weights are not).
            self.autocast = device == "cpu" and dtype in (torch.bfloat16, torch.float16)
            self.autocast_dtype = dtype
            self._teacher = load_teacher(cfg.kind, cfg.path, device=device,
                                         dtype=None if self.autocast else dtype)
        return self._teacher

    def write(self, unit: ShardUnit) -> dict[str, Any]:
        """Sample ``unit`` and write its tar; returns the shard record or ``{"error": msg}``."""
        start = time.perf_counter()
        import torch

        try:
            samples = list(self._samples(unit))
        except (TwostepError, ValueError) as exc:
            return {"error": f"shard {unit.path}: {exc}"}
        except torch.cuda.OutOfMemoryError:
            return {"error": f"shard {unit.path}: out of GPU memory at sample_teacher."
                             f"batch_size={self.job.batch_size}; lower it"}
        import webdataset as wds

        # mtime fixed and no user names: the same samples give the same tar bytes.
        with self.store.open_atomic(self.job.out_dir, unit.path) as handle:
            writer = wds.TarWriter(handle, user="twostep", group="twostep", mtime=0.0,
                                   encoder=False)
            for sample in samples:
                writer.write(sample)
            writer.close()
        return {"path": unit.path, "split": unit.split, "num_samples": len(samples),
                "seconds": time.perf_counter() - start, "actor": os.getpid()}

    def _samples(self, unit: ShardUnit) -> Iterator[dict[str, object]]:
        import torch

        from pipeline.generate import noise_for_seeds, to_uint8

        job, teacher = self.job, self._load()
        shape = teacher.latent_shape(job.teacher.height, job.teacher.width)
        record = {**job.record, "split": unit.split}
        for at in range(0, len(unit.samples), job.batch_size):
            batch = unit.samples[at:at + job.batch_size]
            captions = teacher.encode_prompts([s.prompt for s in batch])
            noise = noise_for_seeds([s.seed for s in batch], shape)
            with torch.autocast("cpu", dtype=self.autocast_dtype, enabled=self.autocast):
                result = teacher.sample(captions, noise, job.teacher.steps,
                                        record_sigmas=(job.sigma_mid,))
            images = to_uint8(teacher.decode(result.final).cpu())
            x_mid = result.recorded[job.sigma_mid]
            for i, planned in enumerate(batch):
                yield encode_sample(planned, record, captions[i], noise[i], x_mid[i],
                                    result.final[i], images[i], job.storage_dtype)


def complete_samples(store: ArtifactStore, out_dir: str, path: str) -> int:
    """Number of complete samples in an existing shard (0 if it cannot be read)."""
    try:
        with store.fs.open(store.path(out_dir, path), "rb") as handle, \
                tarfile.open(fileobj=handle, mode="r:") as tar:
            names = [m.name for m in tar.getmembers()]
    except (OSError, tarfile.TarError):
        return 0
    keys = {name.split(".", 1)[0] for name in names}
    return len(keys) if len(names) == len(keys) * len(SAMPLE_FIELDS) else 0


@dataclass(frozen=True)
class ResumePlan:
    todo: list[ShardUnit]
    reused: int
    temporaries_removed: int


def resume_plan(store: ArtifactStore, out_dir: str, units: list[ShardUnit]) -> ResumePlan:
    """Remove a killed run's temporaries and incomplete shards; the units still to write."""
    stale = [p for p in store.fs.find(store.path(out_dir)) if TMP_MARKER in p.rsplit("/", 1)[-1]]
    for path in stale:
        store.fs.rm(path)
    todo, reused = [], 0
    for unit in units:
        if store.exists(out_dir, unit.path):
            if complete_samples(store, out_dir, unit.path) == len(unit.samples):
                reused += 1
                continue
            store.fs.rm(store.path(out_dir, unit.path))
        todo.append(unit)
    return ResumePlan(todo, reused, len(stale))


def _guard(results: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A dead actor (killed by the OS for memory, say) becomes one clear line; the complete
    shards stay, so a rerun resumes."""
    import ray

    try:
        yield from results
    except ray.exceptions.RayActorError as exc:
        raise ArtifactError(f"sample_teacher: a sampling actor died ({str(exc).splitlines()[0]}"
                            f"); complete shards are kept, rerun to resume (a smaller "
                            f"sample_teacher.batch_size needs less memory)") from None


def sample_on_actor_pool(job: ShardJob, todo: list[ShardUnit], num_actors: int,
                         cpus_per_actor: int, log: logging.Logger,
                         progress: Callable[[float], None]) -> list[dict[str, Any]]:
    """Write ``todo`` on a Ray actor pool (one actor per GPU, else ``num_actors`` CPU actors,
    never more than the cluster can place); the shard records, as they finish."""
    import ray
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if cpus_per_actor > cpus:
        raise ConfigError(f"sample_teacher.cpus_per_actor={cpus_per_actor} but the Ray "
                          f"cluster has {cpus} CPU(s)")
    # A pending actor would hold its share of the work forever.
    placeable = cpus // cpus_per_actor
    n_actors = max(1, min(gpus if gpus else num_actors, len(todo), placeable))
    actor_cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=1 if gpus else 0)(ShardSampler)
    actors = [actor_cls.remote(job, cpus_per_actor) for _ in range(n_actors)]
    total = sum(len(u.samples) for u in todo)
    log.info("sample_teacher: %d shards (%d samples) on %d %s actor(s)", len(todo), total,
             n_actors, "GPU" if gpus else "CPU")
    results, done, start, last = [], 0, time.perf_counter(), 0.0
    try:
        results_iter = ActorPool(actors).map_unordered(lambda a, u: a.write.remote(u), todo)
        for result in _guard(results_iter):
            if "error" in result:
                raise ArtifactError(result["error"])
            results.append(result)
            done += result["num_samples"]
            progress(done / total)
            now = time.perf_counter()
            if now - last >= _PROGRESS_EVERY_S or len(results) == len(todo):
                last = now
                rate = done / max(now - start, 1e-9)
                log.info("sample_teacher: %d/%d shards, %d/%d samples, %.1f samples/s, "
                         "eta %.0f s", len(results), len(todo), done, total, rate,
                         (total - done) / max(rate, 1e-9))
    finally:
        for actor in actors:
            ray.kill(actor)
    return results


def actors_used(results: list[dict[str, Any]]) -> int:
    return len({r["actor"] for r in results})
