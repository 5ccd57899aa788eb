"""Stage ``sample_teacher``: curated prompts -> teacher trajectories in WebDataset shards.

Each split's samples (``samples_per_prompt`` noise seeds per prompt, seeds from
``hash(seed, prompt_id, k)``) are cut into shards of ``samples_per_shard`` by a deterministic
plan and written by a Ray actor pool, resumably (:mod:`pipeline.samples.sampling`).
"""

from __future__ import annotations

import time

from pipeline.errors import ArtifactError
from pipeline.stage import StageContext, StageResult, StageSpec
from pipeline.teachers.describe import describe_teacher
from schemas.config import DistillConfig, SampleTeacherConfig
from schemas.manifest import (
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

    from pipeline.flow import sigma_index
    from pipeline.samples.format import plan_shards
    from pipeline.samples.sampling import (
        ShardJob,
        busy_seconds,
        resume_plan,
        sample_on_actor_pool,
    )

    cfg, teacher_cfg = ctx.section, ctx.teacher
    assert isinstance(cfg, SampleTeacherConfig) and teacher_cfg is not None
    desc = describe_teacher(teacher_cfg)
    sigma_index(cfg.sigma_mid, desc.sigmas, "sigma_mid")
    prompts = _prompts(ctx, cfg)
    per_prompt = {"train": cfg.samples_per_prompt, "eval": cfg.eval_samples_per_prompt}
    plans = {split: plan_shards(split, *prompts[split], per_prompt[split], cfg.seed,
                                cfg.samples_per_shard) for split in SPLITS}
    if not plans["train"]:
        raise ArtifactError("sample_teacher: the curated train split holds no prompts")
    plan = resume_plan(ctx.store, ctx.out_dir, [u for split in SPLITS for u in plans[split]])
    if plan.reused or plan.temporaries_removed:
        ctx.log.info("sample_teacher: resuming; %d complete shard(s) kept, %d to write, %d "
                     "stale temporary file(s) removed", plan.reused, len(plan.todo),
                     plan.temporaries_removed)
    job = ShardJob(teacher=teacher_cfg, record={"teacher_id": desc.teacher_id,
                                                "sigmas": desc.sigmas,
                                                "sigma_mid": cfg.sigma_mid},
                   sigma_mid=cfg.sigma_mid, storage_dtype=cfg.storage_dtype,
                   batch_size=cfg.batch_size, store_root=ctx.store.root_uri,
                   out_dir=ctx.out_dir)
    start = time.perf_counter()
    written = sample_on_actor_pool(job, plan.todo, cfg.num_actors, cfg.cpus_per_actor,
                                   ctx.log, ctx.progress) if plan.todo else []
    sample_s = round(time.perf_counter() - start, 3)

    entries = {u.path: ctx.store.file_entry(ctx.out_dir, u.path)
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
                               "storage_dtype": cfg.storage_dtype})


def check(cfg: DistillConfig) -> None:
    """Before any work: the teacher folder is readable and ``sigma_mid`` lies on its
    schedule."""
    from pipeline.flow import sigma_index

    desc = describe_teacher(cfg.teacher)
    sigma_index(cfg.sample_teacher.sigma_mid, desc.sigmas, "sigma_mid")


def _fingerprint(cfg: DistillConfig) -> dict[str, str]:
    desc = describe_teacher(cfg.teacher)
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
    uses_teacher=True,
    samples_teacher=True,
)
