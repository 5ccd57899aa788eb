"""Teacher sampling into shards on a Ray actor pool, resumable.

A :class:`ShardSampler` (one per Ray actor; the teacher loads once, lazily) samples a whole
shard in batches and writes it under a temporary name, renamed when complete
(:meth:`ArtifactStore.open_atomic`). A killed run therefore leaves only complete shards plus
temporaries; :func:`resume_plan` removes the temporaries and keeps every complete shard, so
each key is written exactly once. :func:`sample_on_actor_pool` runs the shards still to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
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

    def ready(self) -> str | None:
        """Load the teacher now (so that timing a pool counts sampling only); a loading
        problem comes back as its message."""
        try:
            self._load()
        except (TwostepError, ValueError) as exc:
            return f"sample_teacher: {exc}"
        return None

    def probe(self, unit: ShardUnit, batches: int = 1) -> int:
        """Sample the first ``batches`` batch(es) of ``unit`` and drop them (calibration: a
        shard's bytes can depend on the torch thread count, so trial splits write nothing);
        the number of samples computed."""
        n = 0
        for _ in islice(self._samples(unit), batches * self.job.batch_size):
            n += 1
        return n

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


CALIBRATION_CACHE = "sampling"
"""The per-machine cache of calibrated splits (:mod:`pipeline.machine_cache`)."""

MAX_THREADS_PER_ACTOR = 16
"""``auto``: torch threads per CPU actor at most. One process with all of a node's cores
beats several smaller ones where it was measured (2 cores: one 2-thread actor 18.3 steady
images/s, two 1-thread actors 11.0; benchmarks/results/sample_teacher-cpu.json), but one
process's intra-op scaling flattens on many cores, so a big node gets one actor per 16."""


@dataclass(frozen=True)
class ActorPlan:
    """How many sampling actors, with how many CPUs (torch threads) each, and whether on GPUs."""

    actors: int
    cpus_per_actor: int
    gpu: bool

    def describe(self) -> str:
        kind = "GPU" if self.gpu else "CPU"
        return f"{self.actors} {kind} actor(s) x {self.cpus_per_actor} thread(s)"


def plan_actor_pool(node_cpus: list[int], gpus: int, shards: int, num_actors: int | str,
                    cpus_per_actor: int | str) -> ActorPlan:
    """The actor pool for ``shards`` shards on a cluster whose alive nodes have ``node_cpus``
    CPUs and ``gpus`` GPUs in all.

    With GPUs: one actor per GPU. On CPUs, ``auto`` actors and threads: every node is split
    into ``ceil(cpus / MAX_THREADS_PER_ACTOR)`` equal actors; a fixed ``cpus_per_actor``
    packs as many actors of that size as the nodes hold, and a fixed ``num_actors`` caps the
    count. Never more actors than shards (an idle actor holds cores), and never an actor the
    cluster cannot place (a pending actor would hold its share of the work forever); with
    fewer shards than actors on one node, ``auto`` threads grow to use the freed cores.
    """
    node_cpus = [c for c in node_cpus if c >= 1] or [1]
    if isinstance(cpus_per_actor, int) and cpus_per_actor > max(node_cpus):
        raise ConfigError(f"sample_teacher.cpus_per_actor={cpus_per_actor} but the largest "
                          f"Ray node has {max(node_cpus)} CPU(s); lower it or use auto")
    wanted = num_actors if isinstance(num_actors, int) else None
    if gpus:
        n = max(1, min(gpus, shards, wanted or gpus))
        threads = cpus_per_actor if isinstance(cpus_per_actor, int) else \
            max(1, sum(node_cpus) // max(gpus, 1))
        return ActorPlan(n, min(threads, max(node_cpus)), gpu=True)
    if isinstance(cpus_per_actor, int):
        slots = [cpus_per_actor] * sum(c // cpus_per_actor for c in node_cpus)
    else:
        slots = []
        for cpus in node_cpus:
            parts = min(wanted, cpus) if wanted else -(-cpus // MAX_THREADS_PER_ACTOR)
            slots += [cpus // parts] * parts
    slots.sort(reverse=True)
    n = max(1, min(len(slots), shards, wanted or len(slots)))
    threads = slots[n - 1] if slots else 1
    if not isinstance(cpus_per_actor, int) and len(node_cpus) == 1:
        # Fewer shards than actors: the actors left out free their cores.
        cap = node_cpus[0] if wanted else MAX_THREADS_PER_ACTOR
        threads = max(threads, min(cap, node_cpus[0] // n))
    return ActorPlan(n, threads, gpu=False)


def _node_cpus() -> list[int]:
    import ray

    return [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]


def split_candidates(cpus: int) -> list[int]:
    """Threads per actor worth trying on one node of ``cpus`` CPUs (calibration): the
    default split (:func:`plan_actor_pool`) and a split into actors of ``cpus // 16`` threads
    (one thread each up to 16 CPUs). Which wins depends on the machine: on one 2-core VM
    two 1-thread actors sampled the toy teacher 14% faster than one 2-thread actor, on
    another one 2-thread actor was 66% faster (docs/teacher-samples.md)."""
    default = plan_actor_pool([cpus], 0, cpus, "auto", "auto").cpus_per_actor
    many = max(1, cpus // MAX_THREADS_PER_ACTOR)
    return [default] if many == default else [default, many]


def calibration_key(job: ShardJob, cpus: int) -> str:
    """What the fastest split depends on: the machine, the teacher and the batch."""
    from importlib.metadata import version

    from pipeline.precision import cpu_model

    t = job.teacher
    parts = [cpu_model(), cpus, job.record.get("teacher_id"), t.height, t.width, t.dtype,
             job.batch_size, version("torch")]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def _known_split(key: str) -> int | None:
    from pipeline.machine_cache import recall

    record = recall(CALIBRATION_CACHE, key)
    try:
        return int(record["threads"]) if record else None
    except (KeyError, TypeError, ValueError):
        return None


class _Progress:
    """Counts finished shards across pools and logs the rate every few seconds."""

    def __init__(self, todo: list[ShardUnit], log: logging.Logger,
                 progress: Callable[[float], None]) -> None:
        self.shards, self.total = len(todo), sum(len(u.samples) for u in todo)
        self.log, self.progress = log, progress
        self.results: list[dict[str, Any]] = []
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def add(self, result: dict[str, Any]) -> None:
        if "error" in result:
            raise ArtifactError(result["error"])
        self.results.append(result)
        self.done += result["num_samples"]
        self.progress(self.done / self.total)
        now = time.perf_counter()
        if now - self.last >= _PROGRESS_EVERY_S or len(self.results) == self.shards:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.log.info("sample_teacher: %d/%d shards, %d/%d samples, %.1f samples/s, "
                          "eta %.0f s", len(self.results), self.shards, self.done, self.total,
                          rate, (self.total - self.done) / max(rate, 1e-9))


def _start_pool(job: ShardJob, plan: ActorPlan) -> list[Any]:
    """``plan``'s actors with their teachers loaded (so that timing counts sampling only)."""
    import ray

    actor_cls = ray.remote(num_cpus=plan.cpus_per_actor,
                           num_gpus=1 if plan.gpu else 0)(ShardSampler)
    actors = [actor_cls.remote(job, plan.cpus_per_actor) for _ in range(plan.actors)]
    try:
        for message in _guard(iter(ray.get([a.ready.remote() for a in actors]))):
            if message:
                raise ArtifactError(message)
    except BaseException:
        _stop_pool(actors)
        raise
    return actors


def _stop_pool(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)


def _probe_rate(job: ShardJob, plan: ActorPlan, units: list[ShardUnit]) -> float:
    """Samples/s of ``plan``'s actors sampling (not writing) the head of one unit each."""
    import ray

    actors = _start_pool(job, plan)
    try:
        start = time.perf_counter()
        samples = sum(_guard(iter(ray.get([a.probe.remote(u)
                                           for a, u in zip(actors, units, strict=False)]))))
        return samples / max(time.perf_counter() - start, 1e-9)
    finally:
        _stop_pool(actors)


def calibrate_split(job: ShardJob, cpus: int, units: list[ShardUnit],
                    log: logging.Logger) -> int | None:
    """Threads per actor for a one-node CPU cluster of ``cpus`` CPUs: the known choice for
    this machine, teacher and batch, else the fastest of :func:`split_candidates` measured on
    the heads of ``units`` (nothing is written) and remembered in
    ``$XDG_CACHE_HOME/twostep/sampling.json``. None: nothing to choose between."""
    candidates = split_candidates(cpus)
    if len(candidates) < 2:
        return None
    key = calibration_key(job, cpus)
    known = _known_split(key)
    if known is not None or len(units) < cpus:  # too few shards to measure every split
        return known
    rates = {}
    for threads in candidates:
        plan = plan_actor_pool([cpus], 0, len(units), "auto", threads)
        rates[threads] = _probe_rate(job, plan, units[:plan.actors])
        log.info("sample_teacher: calibrating, %s: %.1f samples/s", plan.describe(),
                 rates[threads])
    best = max(rates, key=rates.__getitem__)
    from pipeline.machine_cache import remember

    remember(CALIBRATION_CACHE, key, {"cpus": cpus, "teacher": job.record.get("teacher_id"),
                          "batch_size": job.batch_size, "threads": best,
                          "samples_per_s": {str(t): round(r, 2) for t, r in rates.items()}})
    return best


def sample_on_actor_pool(job: ShardJob, todo: list[ShardUnit], num_actors: int | str,
                         cpus_per_actor: int | str, log: logging.Logger,
                         progress: Callable[[float], None]) -> list[dict[str, Any]]:
    """Write ``todo`` on a Ray actor pool planned by :func:`plan_actor_pool` from the
    cluster's resources; the shard records, as they finish.

    On a one-node CPU cluster with both settings ``auto`` the split is calibrated once per
    machine, teacher and batch (:func:`calibrate_split`). Every shard of one run is written
    with one thread count: a shard's bytes can depend on it (seen on the toy teacher for a
    6-sample shard with 1 vs 2 threads)."""
    import ray
    from ray.util import ActorPool

    gpus = int(ray.cluster_resources().get("GPU", 0))
    nodes = _node_cpus()
    if not gpus and len(nodes) == 1 and num_actors == cpus_per_actor == "auto":
        cpus_per_actor = calibrate_split(job, nodes[0], todo, log) or "auto"
    plan = plan_actor_pool(nodes, gpus, len(todo), num_actors, cpus_per_actor)
    sink = _Progress(todo, log, progress)
    log.info("sample_teacher: %d shards (%d samples) on %s", len(todo), sink.total,
             plan.describe())
    actors = _start_pool(job, plan)
    try:
        for result in _guard(ActorPool(actors).map_unordered(lambda a, u: a.write.remote(u),
                                                             todo)):
            sink.add({**result, "concurrency": plan.actors})
    finally:
        _stop_pool(actors)
    return sink.results


def busy_seconds(results: list[dict[str, Any]]) -> float:
    """Wall seconds the pools spent writing, without actor start-up: each shard's time
    divided by the number of actors writing beside it."""
    return sum(r["seconds"] / r.get("concurrency", 1) for r in results)
