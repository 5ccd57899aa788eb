"""Stage ``sample_teacher``: curated prompts -> teacher trajectories in WebDataset shards.

Each split's samples (``samples_per_prompt`` noise seeds per prompt, seeds from
``hash(seed, prompt_id, k)``) are cut into shards of ``samples_per_shard`` by a deterministic
plan. A pool of Ray actors, each loading the teacher once (one per GPU, else ``num_actors``
CPU actors), samples a shard in batches and writes it under a temporary name, renamed when
complete. A killed run therefore leaves only complete shards (plus temporaries, removed on the
next start); the rerun skips the complete ones, so every key is written exactly once.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.curation.promptset import read_prompts
from pipeline.errors import ArtifactError, ConfigError, TwostepError
from pipeline.samples.format import ShardUnit, encode_sample, plan_shards
from pipeline.stage import StageContext, StageResult, StageSpec
from pipeline.store import TMP_MARKER, ArtifactStore
from pipeline.teachers.describe import TeacherDescription, describe_teacher, sigma_index
from schemas.config import DistillConfig, SampleTeacherConfig, TeacherConfig
from schemas.manifest import (
    SAMPLE_FIELDS,
    PromptSetManifest,
    SampleShard,
    SampleSplit,
    TeacherInfo,
    TeacherSamplesManifest,
)

SPLITS = ("train", "eval")
_PROGRESS_EVERY_S = 5.0


class ShardSampler:
    """Samples and writes whole shards; one per Ray actor (the teacher loads once, lazily, so
    a loading problem comes back as a message instead of a dead actor)."""

    def __init__(self, teacher: TeacherConfig, record: dict[str, Any], sigma_mid: float,
                 storage_dtype: str, batch_size: int, threads: int, root: str,
                 out_dir: str) -> None:
        import torch

        torch.set_num_threads(threads)
        self.teacher_cfg = teacher
        self.record = record
        self.sigma_mid = sigma_mid
        self.storage_dtype = storage_dtype
        self.batch_size = batch_size
        self.store = ArtifactStore(root)
        self.out_dir = out_dir
        self._teacher = None

    def _load(self):
        if self._teacher is None:
            import torch

            from pipeline.teachers import load_teacher

            device = "cuda" if torch.cuda.is_available() else "cpu"
            dtype = None if self.teacher_cfg.dtype == "auto" else getattr(
                torch, self.teacher_cfg.dtype)
            # On CPU a low-precision dtype means fp32 weights under autocast (bf16 matmuls are
            # ~1.9x faster on AVX512-BF16 CPUs; bf16 weights are not).
            self.autocast = device == "cpu" and dtype in (torch.bfloat16, torch.float16)
            self.autocast_dtype = dtype
            self._teacher = load_teacher(self.teacher_cfg.kind, self.teacher_cfg.path,
                                         device=device,
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
                             f"batch_size={self.batch_size}; lower it"}
        import webdataset as wds

        # mtime fixed and no user names: the same samples give the same tar bytes.
        with self.store.open_atomic(self.out_dir, unit.path) as handle:
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

        teacher = self._load()
        shape = teacher.latent_shape(self.teacher_cfg.height, self.teacher_cfg.width)
        record = {**self.record, "split": unit.split}
        for at in range(0, len(unit.samples), self.batch_size):
            batch = unit.samples[at:at + self.batch_size]
            captions = teacher.encode_prompts([s.prompt for s in batch])
            noise = noise_for_seeds([s.seed for s in batch], shape)
            with torch.autocast("cpu", dtype=self.autocast_dtype, enabled=self.autocast):
                result = teacher.sample(captions, noise, self.teacher_cfg.steps,
                                        record_sigmas=(self.sigma_mid,))
            images = to_uint8(teacher.decode(result.final).cpu())
            x_mid = result.recorded[self.sigma_mid]
            for i, planned in enumerate(batch):
                yield encode_sample(planned, record, captions[i], noise[i], x_mid[i],
                                    result.final[i], images[i], self.storage_dtype)


def _complete_samples(store: ArtifactStore, out_dir: str, path: str) -> int:
    """Number of complete samples in an existing shard (0 if it cannot be read)."""
    try:
        with store.fs.open(store.path(out_dir, path), "rb") as handle, \
                tarfile.open(fileobj=handle, mode="r:") as tar:
            names = [m.name for m in tar.getmembers()]
    except (OSError, tarfile.TarError):
        return 0
    keys = {name.split(".", 1)[0] for name in names}
    return len(keys) if len(names) == len(keys) * len(SAMPLE_FIELDS) else 0


def _remove_temporaries(store: ArtifactStore, out_dir: str) -> int:
    stale = [p for p in store.fs.find(store.path(out_dir)) if TMP_MARKER in p.rsplit("/", 1)[-1]]
    for path in stale:
        store.fs.rm(path)
    return len(stale)


def _prompts(ctx: StageContext, cfg: SampleTeacherConfig) -> dict[str, tuple[list, list]]:
    manifest = ctx.inputs["curate"]
    assert isinstance(manifest, PromptSetManifest)
    out = {}
    for split in SPLITS:
        table = read_prompts(ctx.store, manifest, split)
        limit = cfg.max_train_prompts if split == "train" else cfg.max_eval_prompts
        if limit is not None:
            table = table.slice(0, limit)
        out[split] = (table.column("prompt_id").to_pylist(), table.column("prompt").to_pylist())
    return out


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


def _run_pool(ctx: StageContext, cfg: SampleTeacherConfig, desc: TeacherDescription,
              todo: list[ShardUnit]) -> list[dict[str, Any]]:
    import ray
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if cfg.cpus_per_actor > cpus:
        raise ConfigError(f"sample_teacher.cpus_per_actor={cfg.cpus_per_actor} but the Ray "
                          f"cluster has {cpus} CPU(s)")
    # Never more actors than the cluster can place at once: a pending actor would hold its
    # share of the work forever.
    placeable = cpus // cfg.cpus_per_actor
    n_actors = max(1, min(gpus if gpus else cfg.num_actors, len(todo), placeable))
    actor_cls = ray.remote(num_cpus=cfg.cpus_per_actor, num_gpus=1 if gpus else 0)(ShardSampler)
    record = {"teacher_id": desc.teacher_id, "sigmas": desc.sigmas, "sigma_mid": cfg.sigma_mid}
    actors = [actor_cls.remote(cfg.teacher, record, cfg.sigma_mid, cfg.storage_dtype,
                               cfg.batch_size, cfg.cpus_per_actor, ctx.store.root_uri,
                               ctx.out_dir) for _ in range(n_actors)]
    total = sum(len(u.samples) for u in todo)
    ctx.log.info("sample_teacher: %d shards (%d samples) on %d %s actor(s)", len(todo), total,
                 n_actors, "GPU" if gpus else "CPU")
    results, done, start, last = [], 0, time.perf_counter(), 0.0
    try:
        results_iter = ActorPool(actors).map_unordered(lambda a, u: a.write.remote(u), todo)
        for result in _guard(results_iter):
            if "error" in result:
                raise ArtifactError(result["error"])
            results.append(result)
            done += result["num_samples"]
            ctx.progress(done / total)
            now = time.perf_counter()
            if now - last >= _PROGRESS_EVERY_S or len(results) == len(todo):
                last = now
                rate = done / max(now - start, 1e-9)
                ctx.log.info("sample_teacher: %d/%d shards, %d/%d samples, %.1f samples/s, "
                             "eta %.0f s", len(results), len(todo), done, total, rate,
                             (total - done) / max(rate, 1e-9))
    finally:
        for actor in actors:
            ray.kill(actor)
    return results


def n_actors_used(results: list[dict[str, Any]]) -> int:
    return len({r["actor"] for r in results})


def sample_teacher(ctx: StageContext) -> StageResult:
    cfg = ctx.section
    assert isinstance(cfg, SampleTeacherConfig)
    timings: dict[str, float] = {}
    desc = describe_teacher(cfg.teacher)
    sigma_index(cfg.sigma_mid, desc.sigmas)
    prompts = _prompts(ctx, cfg)
    plans = {split: plan_shards(split, *prompts[split],
                                cfg.samples_per_prompt if split == "train"
                                else cfg.eval_samples_per_prompt,
                                cfg.seed, cfg.samples_per_shard) for split in SPLITS}
    units = [u for split in SPLITS for u in plans[split]]
    if not plans["train"]:
        raise ArtifactError("sample_teacher: the curated train split holds no prompts")

    removed = _remove_temporaries(ctx.store, ctx.out_dir)
    todo, reused = [], 0
    for unit in units:
        if ctx.store.exists(ctx.out_dir, unit.path):
            if _complete_samples(ctx.store, ctx.out_dir, unit.path) == len(unit.samples):
                reused += 1
                continue
            ctx.store.fs.rm(ctx.store.path(ctx.out_dir, unit.path))
        todo.append(unit)
    if reused or removed:
        ctx.log.info("sample_teacher: resuming; %d complete shard(s) kept, %d to write, %d "
                     "stale temporary file(s) removed", reused, len(todo), removed)
    start = time.perf_counter()
    written = _run_pool(ctx, cfg, desc, todo) if todo else []
    timings["sample_s"] = round(time.perf_counter() - start, 3)
    new_samples = sum(r["num_samples"] for r in written)

    splits = {}
    for split in SPLITS:
        shards = [SampleShard(path=u.path, num_samples=len(u.samples),
                              size=ctx.store.fs.size(ctx.store.path(ctx.out_dir, u.path)),
                              sha256=ctx.store.sha256(ctx.out_dir, u.path))
                  for u in plans[split]]
        splits[split] = SampleSplit(num_prompts=len(prompts[split][0]),
                                    num_samples=sum(s.num_samples for s in shards),
                                    shards=shards)
    teacher = TeacherInfo(kind=desc.kind, teacher_id=desc.teacher_id, steps=cfg.teacher.steps,
                          sigmas=desc.sigmas, sigma_mid=cfg.sigma_mid,
                          latent_shape=list(desc.latent_shape), caption_dim=desc.caption_dim,
                          height=cfg.teacher.height, width=cfg.teacher.width)
    counts = {"train_samples": splits["train"].num_samples,
              "eval_samples": splits["eval"].num_samples,
              "shards": len(units), "shards_written": len(written), "shards_reused": reused,
              "samples_written": new_samples}
    sizes = [s.size / s.num_samples for sp in splits.values() for s in sp.shards]
    # Per-actor busy time (shard sampling and writing, teacher loading included), without
    # Ray start-up: the rate a long run settles at.
    busy = sum(r["seconds"] for r in written) / max(1, n_actors_used(written))
    metrics = {"samples_per_s": round(new_samples / max(timings["sample_s"], 1e-9), 3),
               "steady_samples_per_s": round(new_samples / max(busy, 1e-9), 3),
               "bytes_per_sample": round(float(np.mean(sizes)), 1) if sizes else 0.0}
    ctx.log.info("sample_teacher: %s", counts)
    return StageResult(counts=counts, metrics=metrics, timings=timings,
                       fields={"splits": splits, "teacher": teacher,
                               "storage_dtype": cfg.storage_dtype})


def check(cfg: DistillConfig) -> None:
    """Before any work: the teacher folder is readable and ``sigma_mid`` lies on its
    schedule."""
    desc = describe_teacher(cfg.sample_teacher.teacher)
    sigma_index(cfg.sample_teacher.sigma_mid, desc.sigmas)


def _fingerprint(cfg: DistillConfig) -> dict[str, str]:
    desc = describe_teacher(cfg.sample_teacher.teacher)
    return {f"teacher:{name}": value for name, value in desc.fingerprint.items()}


STAGE: StageSpec[TeacherSamplesManifest] = StageSpec(
    name="sample_teacher",
    upstream=("curate",),
    manifest_type=TeacherSamplesManifest,
    section=lambda cfg: cfg.sample_teacher,
    run=sample_teacher,
    check=check,
    version=1,
    fingerprint=_fingerprint,
    key_exclude=("batch_size", "num_actors", "cpus_per_actor"),
)
