"""Stage ``sample_teacher``: curated prompts -> teacher trajectories in WebDataset shards.

Each split's samples (``samples_per_prompt`` noise seeds per prompt, seeds from
``hash(seed, prompt_id, k)``) are cut into shards of ``samples_per_shard`` by a deterministic
plan and written by a Ray actor pool, resumably (:mod:`pipeline.samples.sampling`): a rerun
of an unfinished folder keeps the shards whose bytes match their checksums and writes the
rest with the settings recorded in the folder (``sampling-settings.json``).
"""

from __future__ import annotations

import time

from pipeline.errors import ArtifactError
from pipeline.stage import StageContext, StageResult, StageSpec
from pipeline.teachers.describe import describe_teacher
from schemas.config import DistillConfig, SampleTeacherConfig
from schemas.manifest import (
    FileEntry,
    PromptSetManifest,
    SampleShard,
    SampleSplit,
    TeacherInfo,
    TeacherSamplesManifest,
)

SPLITS = ("train", "eval")


def _prompts(ctx: StageContext, cfg: SampleTeacherConfig) -> dict[str, tuple[list, list]]:
    from pipeline.curation.promptset import read_prompts

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


def sample_teacher(ctx: StageContext) -> StageResult:
    # Heavy imports here, not at module level: a cache hit imports none of them.
    import numpy as np

    from pipeline.samples.format import plan_shards
    from pipeline.samples.sampling import (
        ShardJob,
        busy_seconds,
        check_reproducible,
        plan_pool,
        read_settings,
        record_compute_dtype,
        resume_plan,
        sample_on_actor_pool,
        settings_of,
        write_settings,
    )
    from pipeline.schedule import sigma_index

    cfg, teacher_cfg = ctx.section, ctx.teacher
    assert isinstance(cfg, SampleTeacherConfig) and teacher_cfg is not None
    desc = describe_teacher(teacher_cfg)
    sigma_index(cfg.sigma_mid, desc.sigmas, "sample_teacher.sigma_mid")
    prompts = _prompts(ctx, cfg)
    per_prompt = {"train": cfg.samples_per_prompt, "eval": cfg.eval_samples_per_prompt}
    plans = {split: plan_shards(split, *prompts[split], per_prompt[split], cfg.seed,
                                cfg.samples_per_shard) for split in SPLITS}
    if not plans["train"]:
        raise ArtifactError("the curated train split holds no prompts; curate again (distill "
                            "run --only curate --force)")
    job = ShardJob(teacher=teacher_cfg, record={"teacher_id": desc.teacher_id,
                                                "sigmas": desc.sigmas,
                                                "sigma_mid": cfg.sigma_mid},
                   sigma_mid=cfg.sigma_mid, storage_dtype=cfg.storage_dtype,
                   batch_size=cfg.batch_size, store_root=ctx.store.root_uri,
                   out_dir=ctx.out_dir)
    # The settings the shards already here were written with (None: a fresh folder, or one
    # whose record is lost: its shards cannot be trusted to match and are written again).
    units = [u for split in SPLITS for u in plans[split]]
    recorded = read_settings(ctx.store, ctx.out_dir, ctx.log)
    if recorded is not None and not any(ctx.store.exists(ctx.out_dir, u.path) for u in units):
        recorded = None  # no shard written with it yet: nothing to stay consistent with
    if recorded is not None:  # before anything in the folder changes
        check_reproducible(job, recorded)
    plan = resume_plan(ctx.store, ctx.out_dir, units, trusted=recorded is not None)
    if plan.rejected:
        why = "damaged or unverifiable" if recorded else "written with unrecorded settings"
        ctx.log.warning("sample_teacher: %d shard(s) %s removed, written again: %s",
                        len(plan.rejected), why, ", ".join(plan.rejected))
    if plan.reused or plan.temporaries_removed:
        ctx.log.info("sample_teacher: resuming; %d complete shard(s) kept, %d to write, %d "
                     "stale temporary file(s) removed", plan.reused, len(plan.todo),
                     plan.temporaries_removed)
    start = time.perf_counter()
    written: list[dict] = []
    if plan.todo:
        # A forced recomputation builds beside the finished result: reproduce its settings.
        finished = f"{ctx.name}/{ctx.key}"
        previous = read_settings(ctx.store, finished) if ctx.out_dir != finished else None
        pool = plan_pool(job, plan.todo, cfg.num_actors, cfg.cpus_per_actor, ctx.log,
                         recorded=recorded, previous=previous)
        if recorded is None:  # before the first shard
            write_settings(ctx.store, ctx.out_dir, settings_of(job, pool))
        written = sample_on_actor_pool(job, plan.todo, pool, ctx.log, ctx.progress)
    sample_s = round(time.perf_counter() - start, 3)
    compute_dtype = record_compute_dtype(ctx.store, ctx.out_dir, written, teacher_cfg.dtype,
                                         ctx.log)

    # Shards are hashed once: as written (by the actor) or as verified (on resume).
    entries = {**plan.entries, **{r["path"]: FileEntry(path=r["path"], size=r["size"],
                                                       sha256=r["sha256"]) for r in written}}
    entries = {u.path: entries.get(u.path) or ctx.store.file_entry(ctx.out_dir, u.path)
               for split in SPLITS for u in plans[split]}
    splits = {split: SampleSplit(
        num_prompts=len(prompts[split][0]),
        num_samples=sum(len(u.samples) for u in plans[split]),
        shards=[SampleShard(path=u.path, num_samples=len(u.samples), size=entries[u.path].size,
                            sha256=entries[u.path].sha256) for u in plans[split]])
        for split in SPLITS}
    teacher = TeacherInfo(kind=desc.kind, teacher_id=desc.teacher_id, steps=teacher_cfg.steps,
                          sigmas=desc.sigmas, sigma_mid=cfg.sigma_mid,
                          latent_shape=list(desc.latent_shape), caption_dim=desc.caption_dim,
                          height=teacher_cfg.height, width=teacher_cfg.width)
    new_samples = sum(r["num_samples"] for r in written)
    counts = {"train_samples": splits["train"].num_samples,
              "eval_samples": splits["eval"].num_samples, "shards": len(entries),
              "shards_written": len(written), "shards_reused": plan.reused,
              "shards_rejected": len(plan.rejected),
              "samples_written": new_samples}
    sizes = [s.size / s.num_samples for sp in splits.values() for s in sp.shards]
    # Busy time (shard sampling and writing, without Ray start-up and teacher loading): the
    # rate a long run settles at.
    busy = busy_seconds(written)
    metrics = {"samples_per_s": round(new_samples / max(sample_s, 1e-9), 3),
               "steady_samples_per_s": round(new_samples / max(busy, 1e-9), 3),
               "bytes_per_sample": round(float(np.mean(sizes)), 1) if sizes else 0.0}
    ctx.log.info("sample_teacher: %s", counts)
    return StageResult(counts=counts, metrics=metrics, timings={"sample_s": sample_s},
                       files=list(entries.values()),
                       fields={"splits": splits, "teacher": teacher,
                               "storage_dtype": cfg.storage_dtype,
                               "compute_dtype": compute_dtype})


def check(cfg: DistillConfig) -> None:
    """Before any work: the teacher folder is readable and ``sigma_mid`` lies on its
    schedule."""
    from pipeline.schedule import sigma_index

    desc = describe_teacher(cfg.teacher)
    sigma_index(cfg.sample_teacher.sigma_mid, desc.sigmas, "sample_teacher.sigma_mid")


def _fingerprint(cfg: DistillConfig) -> dict[str, str]:
    desc = describe_teacher(cfg.teacher, check_weights=False)  # the key: configs and files
    return {f"teacher:{name}": value for name, value in desc.fingerprint.items()}


STAGE: StageSpec[TeacherSamplesManifest] = StageSpec(
    name="sample_teacher",
    upstream=("curate",),
    manifest_type=TeacherSamplesManifest,
    section=lambda cfg: cfg.sample_teacher,
    run=sample_teacher,
    check=check,
    version=2,  # 2: checksums and the settings record beside the shards
    fingerprint=_fingerprint,
    uses_teacher=True,
    samples_teacher=True,
)
