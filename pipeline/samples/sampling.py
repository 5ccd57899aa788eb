"""Teacher sampling into shards on Ray actors, resumable and retried.

A :class:`ShardSampler` (one per Ray actor; the teacher loads once, lazily) samples a whole
shard in batches and writes it under a temporary name, renamed when complete
(:meth:`ArtifactStore.open_atomic`); just before the rename it writes the shard's sha256
beside it (``<shard>.sha256``, ``sha256sum`` format). A killed run therefore leaves complete
shards with their checksums plus temporaries; :func:`resume_plan` removes the temporaries and
keeps a shard only if its bytes match its checksum, so each key is written exactly once and a
damaged shard is never kept. The settings that decide a shard's bytes beyond the cache key
(the torch threads per actor) are recorded in the folder before the first shard
(:class:`SamplingSettings`), and a resumed run writes with them. :func:`sample_on_actor_pool`
writes the shards still to do and retries a shard whose actor died on a fresh actor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import IO, Any

from pipeline.errors import ArtifactError, ConfigError, TwostepError
from pipeline.samples.format import ShardUnit, encode_sample
from pipeline.store import TMP_MARKER, ArtifactStore
from schemas.config import TeacherConfig
from schemas.manifest import FileEntry

_PROGRESS_EVERY_S = 5.0

MAX_SHARD_RETRIES = 2
"""Times a shard is resubmitted, each on a fresh actor, after the actor writing it died (a
node lost, a worker killed); one more death and the stage stops (complete shards kept)."""

WAY_OUT = "distill run --only sample_teacher --force"
"""The command that recomputes a teacher-sample folder from scratch."""

CHECKSUM_SUFFIX = ".sha256"
"""``<shard>.sha256`` beside each shard: its sha256 in ``sha256sum`` format, written before
the shard's rename, so every shard on disk has one (``sha256sum -c *.sha256`` checks them)."""

SETTINGS_FILE = "sampling-settings.json"
"""The settings the folder's shards are written with (:class:`SamplingSettings`)."""


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
            computes_in = dtype if self.autocast else self._teacher.compute_dtype
            self.compute_dtype = str(computes_in).removeprefix("torch.")
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
            hashed = _HashingWriter(handle)
            writer = wds.TarWriter(hashed, user="twostep", group="twostep", mtime=0.0,
                                   encoder=False)
            for sample in samples:
                writer.write(sample)
            writer.close()
            # Before the shard's rename: a shard on disk always has its checksum.
            digest = hashed.digest.hexdigest()
            write_checksum(self.store, self.job.out_dir, unit.path, digest)
        return {"path": unit.path, "split": unit.split, "num_samples": len(samples),
                "size": hashed.size, "sha256": digest,
                "seconds": time.perf_counter() - start, "actor": os.getpid(),
                "compute_dtype": self.compute_dtype}

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


class _HashingWriter:
    """A write-only stream that hashes what it passes on (the tar is hashed as written,
    never read back)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


def checksum_name(path: str) -> str:
    return f"{path}{CHECKSUM_SUFFIX}"


def write_checksum(store: ArtifactStore, out_dir: str, path: str, digest: str) -> None:
    name = path.rsplit("/", 1)[-1]
    store.write_bytes(f"{digest}  {name}\n".encode(), out_dir, checksum_name(path))


def read_checksum(store: ArtifactStore, out_dir: str, path: str) -> str | None:
    """The sha256 recorded beside a shard, or None (absent or unreadable)."""
    try:
        text = store.read_bytes(out_dir, checksum_name(path)).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    digest = text.split(" ", 1)[0]
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) \
        else None


def verified_shard(store: ArtifactStore, out_dir: str, path: str) -> FileEntry | None:
    """The shard's entry if its bytes match the checksum written beside it, else None (the
    shard is damaged, or its checksum is missing)."""
    digest = read_checksum(store, out_dir, path)
    if digest is None:
        return None
    try:
        entry = store.file_entry(out_dir, path)
    except OSError:
        return None
    return entry if entry.sha256 == digest else None


def remove_temporaries(store: ArtifactStore, out_dir: str) -> int:
    """Remove the temporaries of interrupted writes (a killed run, a dead actor): their
    count. Only while no writer of this folder runs."""
    if not store.exists(out_dir):
        return 0
    stale = [p for p in store.fs.find(store.path(out_dir))
             if TMP_MARKER in p.rsplit("/", 1)[-1]]
    for path in stale:
        store.fs.rm(path)
    return len(stale)


@dataclass(frozen=True)
class ResumePlan:
    todo: list[ShardUnit]
    reused: int
    temporaries_removed: int
    rejected: list[str]
    """Shards on disk that were removed: damaged (bytes not matching their checksum), or
    without a checksum, or written with unknown settings."""
    entries: dict[str, FileEntry]
    """Size and sha256 of the reused shards (hashed once, while verifying them)."""


def resume_plan(store: ArtifactStore, out_dir: str, units: list[ShardUnit],
                trusted: bool = True) -> ResumePlan:
    """Remove a killed run's temporaries and every shard that cannot be reused; the units
    still to write. A shard is reused only when ``trusted`` (the folder's settings are
    known, :func:`read_settings`) and its bytes match its checksum: a truncated, altered or
    unverifiable shard is removed and written again."""
    removed = remove_temporaries(store, out_dir)
    todo, reused, rejected, entries = [], 0, [], {}
    for unit in units:
        if store.exists(out_dir, unit.path):
            entry = verified_shard(store, out_dir, unit.path) if trusted else None
            if entry is not None:
                reused += 1
                entries[unit.path] = entry
                continue
            store.fs.rm(store.path(out_dir, unit.path))
            rejected.append(unit.path)
        if store.exists(out_dir, checksum_name(unit.path)):
            store.fs.rm(store.path(out_dir, checksum_name(unit.path)))
        todo.append(unit)
    return ResumePlan(todo, reused, removed, rejected, entries)


@dataclass(frozen=True)
class SamplingSettings:
    """What a shard's bytes depend on beyond the cache key: the torch threads per actor (a
    6-sample toy shard differed in the last bits between 1 and 2 threads), and, recorded to
    check, the device kind, the batch size and the teacher's dtype as configured (both in the
    key). ``compute_dtype`` is what the actors computed in (``auto`` resolved on them; bf16
    autocast counts as ``bfloat16``), added once the first shard is written (None before, and
    in folders written before it was recorded)."""

    batch_size: int
    dtype: str
    device: str
    threads_per_actor: int
    compute_dtype: str | None = None

    def describe(self) -> str:
        return (f"batch_size={self.batch_size}, dtype={self.dtype}, device={self.device}, "
                f"{self.threads_per_actor} thread(s) per actor")


def read_settings(store: ArtifactStore, out_dir: str,
                  log: logging.Logger | None = None) -> SamplingSettings | None:
    """The settings recorded in ``out_dir`` (None: absent, or unreadable, which is logged)."""
    if not store.exists(out_dir, SETTINGS_FILE):
        return None
    try:
        raw = json.loads(store.read_bytes(out_dir, SETTINGS_FILE))
        return SamplingSettings(batch_size=int(raw["batch_size"]), dtype=str(raw["dtype"]),
                                device=str(raw["device"]),
                                threads_per_actor=int(raw["threads_per_actor"]),
                                compute_dtype=_optional_str(raw.get("compute_dtype")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if log:
            log.warning("sample_teacher: %s unreadable (%s); its shards are not reused",
                        store.uri(out_dir, SETTINGS_FILE), exc)
        return None


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"compute_dtype is {value!r}, not a string")
    return value


def write_settings(store: ArtifactStore, out_dir: str, settings: SamplingSettings) -> None:
    store.write_bytes(json.dumps(asdict(settings), indent=2, sort_keys=True).encode() + b"\n",
                      out_dir, SETTINGS_FILE)


def record_compute_dtype(store: ArtifactStore, out_dir: str, written: list[dict[str, Any]],
                         configured: str, log: logging.Logger) -> str | None:
    """The dtype the folder's shards were computed in, for the manifest: what this run's
    actors report (``written``: their shard records), kept in ``out_dir``'s settings so that a
    resumed run that writes nothing still knows it; None where no run has recorded it.

    Actors that disagree (a cluster of mixed GPUs under ``auto``) are recorded together,
    ``"bfloat16, float16"``, with a warning; a dtype other than a configured one (a teacher
    that keeps its own weights, as the toy teacher keeps float32 on CUDA) is warned about."""
    settings = read_settings(store, out_dir, log)
    seen = {str(r["compute_dtype"]) for r in written if r.get("compute_dtype")}
    if settings is not None and settings.compute_dtype:
        seen |= set(settings.compute_dtype.split(", "))
    if not seen:
        return None
    compute_dtype = ", ".join(sorted(seen))
    if len(seen) > 1:
        log.warning("sample_teacher: the shards of %s were computed in different dtypes (%s): "
                    "set teacher.dtype explicitly for samples that agree", out_dir,
                    compute_dtype)
    elif configured != "auto" and compute_dtype != configured:
        log.warning("sample_teacher: teacher.dtype is %s, the teacher computed in %s (it keeps "
                    "its own weights' dtype on this device)", configured, compute_dtype)
    if settings is not None and settings.compute_dtype != compute_dtype:
        write_settings(store, out_dir, replace(settings, compute_dtype=compute_dtype))
    return compute_dtype


def settings_of(job: ShardJob, plan: ActorPlan) -> SamplingSettings:
    return SamplingSettings(batch_size=job.batch_size, dtype=job.teacher.dtype,
                            device="gpu" if plan.gpu else "cpu",
                            threads_per_actor=plan.cpus_per_actor)


def _out_of_memory(exc: BaseException) -> bool:
    """Ray reports the death as an out-of-memory kill (its memory monitor, or the node)."""
    import ray

    text = str(exc)
    return isinstance(exc, ray.exceptions.OutOfMemoryError) or any(
        mark in text for mark in ("OUT_OF_MEMORY", "running low on memory",
                                  "OutOfMemoryError"))


def death_message(exc: BaseException, what: str) -> str:
    """One line for a sampling actor that died doing ``what``: out of memory names the batch
    size to lower; otherwise the first line of Ray's report and the way to resume."""
    if _out_of_memory(exc):
        return (f"sample_teacher: a sampling actor was killed for running out of memory "
                f"{what}; lower sample_teacher.batch_size (a new batch size is a new sample "
                f"folder) or give the actors more memory")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"sample_teacher: a sampling actor died {what} ({first}); complete shards are "
            f"kept, rerun to resume")


def _actor_died() -> tuple[type[BaseException], ...]:
    import ray

    return ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError


def _get_all(refs: list[Any], what: str) -> list[Any]:
    """``ray.get`` of a whole pool's calls; a dead actor becomes one clear line."""
    import ray

    try:
        return ray.get(refs)
    except _actor_died() as exc:
        raise ArtifactError(death_message(exc, what)) from None


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


def _actor_class(plan: ActorPlan) -> Any:
    import ray

    return ray.remote(num_cpus=plan.cpus_per_actor,
                      num_gpus=1 if plan.gpu else 0)(ShardSampler)


def _start_pool(job: ShardJob, plan: ActorPlan) -> list[Any]:
    """``plan``'s actors with their teachers loaded (so that timing counts sampling only)."""
    actor_cls = _actor_class(plan)
    actors = [actor_cls.remote(job, plan.cpus_per_actor) for _ in range(plan.actors)]
    try:
        for message in _get_all([a.ready.remote() for a in actors], "while loading the "
                                "teacher"):
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
    actors = _start_pool(job, plan)
    try:
        start = time.perf_counter()
        samples = sum(_get_all([a.probe.remote(u) for a, u in zip(actors, units, strict=False)],
                               "while calibrating the actor split"))
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


def check_reproducible(job: ShardJob, recorded: SamplingSettings) -> None:
    """The shards already in ``job``'s folder were written with ``recorded``: an
    :class:`ArtifactError` naming them and the way out unless this run and this cluster can
    write the rest the same way (same batch size, dtype and device kind; the recorded threads
    per actor fit its largest node)."""
    import ray

    nodes = _node_cpus()
    device = "gpu" if int(ray.cluster_resources().get("GPU", 0)) else "cpu"
    if (recorded.batch_size, recorded.dtype, recorded.device) == \
            (job.batch_size, job.teacher.dtype, device) \
            and recorded.threads_per_actor <= max(nodes, default=1):
        return
    raise ArtifactError(
        f"sample_teacher: {ArtifactStore(job.store_root).uri(job.out_dir)} holds shards "
        f"written with {recorded.describe()}; this run has batch_size={job.batch_size}, "
        f"dtype={job.teacher.dtype} on {device} nodes of at most {max(nodes, default=0)} "
        f"CPU(s); resume it where those settings fit, or recompute it with {WAY_OUT}")


def plan_pool(job: ShardJob, todo: list[ShardUnit], num_actors: int | str,
              cpus_per_actor: int | str, log: logging.Logger,
              recorded: SamplingSettings | None = None,
              previous: SamplingSettings | None = None) -> ActorPlan:
    """The actor pool for ``todo``, planned by :func:`plan_actor_pool` from the cluster's
    resources.

    ``recorded``: the settings of the shards already in the folder (a resumed run): their
    threads per actor are used whatever ``cpus_per_actor`` says (logged), so that the shards
    of one folder never mix thread counts (:func:`check_reproducible` refuses settings this
    cluster cannot reproduce). ``previous``: the settings of the finished folder a forced
    recomputation replaces: its threads are used where they fit, so that the recomputation
    reproduces its bytes. Otherwise, on a one-node CPU cluster with both settings ``auto``,
    the split is calibrated once per machine, teacher and batch (:func:`calibrate_split`)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    nodes = _node_cpus()
    device = "gpu" if gpus else "cpu"
    wanted = cpus_per_actor
    if recorded is not None:
        check_reproducible(job, recorded)
        cpus_per_actor = recorded.threads_per_actor
    elif previous is not None and previous.device == device \
            and previous.threads_per_actor <= max(nodes, default=1):
        cpus_per_actor = previous.threads_per_actor
    elif not gpus and len(nodes) == 1 and num_actors == cpus_per_actor == "auto":
        cpus_per_actor = calibrate_split(job, nodes[0], todo, log) or "auto"
    if wanted not in ("auto", cpus_per_actor):
        why = "the shards already written" if recorded else "the result it recomputes"
        log.info("sample_teacher: %d thread(s) per actor as %s, not cpus_per_actor=%s (a "
                 "shard's bytes can depend on the thread count)", cpus_per_actor, why, wanted)
    return plan_actor_pool(nodes, gpus, len(todo), num_actors, cpus_per_actor)


def sample_on_actor_pool(job: ShardJob, todo: list[ShardUnit], plan: ActorPlan,
                         log: logging.Logger,
                         progress: Callable[[float], None]) -> list[dict[str, Any]]:
    """Write ``todo`` on ``plan``'s actors; the shard records, as they finish.

    Each actor writes one shard at a time. When an actor dies (its process killed: by the
    OS or Ray for memory, by a lost node, by hand), the shard it was writing goes back to
    the queue and a fresh actor of the same plan takes its place; a shard is retried at
    most :data:`MAX_SHARD_RETRIES` times. The dead write's temporary never becomes the shard
    (the rename is atomic) and is removed once the pool is done."""
    import ray

    sink = _Progress(todo, log, progress)
    log.info("sample_teacher: %d shards (%d samples) on %s", len(todo), sink.total,
             plan.describe())
    actors = _start_pool(job, plan)
    queue, idle = deque(todo), list(range(len(actors)))
    running: dict[Any, tuple[int, ShardUnit]] = {}
    retries: Counter[str] = Counter()
    try:
        while queue or running:
            while queue and idle:
                slot, unit = idle.pop(), queue.popleft()
                running[actors[slot].write.remote(unit)] = (slot, unit)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot, unit = running.pop(ref)
            try:
                result = ray.get(ref)
            except _actor_died() as exc:
                retries[unit.path] += 1
                if retries[unit.path] > MAX_SHARD_RETRIES:
                    raise ArtifactError(death_message(
                        exc, f"writing {unit.path} (attempt {retries[unit.path]} of "
                             f"{MAX_SHARD_RETRIES + 1})")) from None
                cause = str(exc).strip().splitlines()[0] if str(exc).strip() else "no cause"
                log.warning("sample_teacher: the actor writing %s died (%s); retry %d of %d "
                            "on a fresh actor", unit.path, cause, retries[unit.path],
                            MAX_SHARD_RETRIES)
                ray.kill(actors[slot])
                actors[slot] = _actor_class(plan).remote(job, plan.cpus_per_actor)
                queue.appendleft(unit)
                idle.append(slot)
                continue
            idle.append(slot)
            sink.add({**result, "concurrency": plan.actors})
    finally:
        _stop_pool(actors)
    if retries:
        remove_temporaries(ArtifactStore(job.store_root), job.out_dir)
    return sink.results


def busy_seconds(results: list[dict[str, Any]]) -> float:
    """Wall seconds the pools spent writing, without actor start-up: each shard's time
    divided by the number of actors writing beside it."""
    return sum(r["seconds"] / r.get("concurrency", 1) for r in results)
