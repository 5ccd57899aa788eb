"""What ``train_init`` and ``train_e2e`` share: building the job, running it, the manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.stage import StageContext, StageResult
from pipeline.tracking import mlflow_artifact_root, mlflow_uri
from schemas.config import DistillConfig, LoraConfig, TrainCommonConfig, TrainE2EConfig
from schemas.manifest import TeacherSamplesManifest

if TYPE_CHECKING:  # the training loop imports torch: not at module level (cheap cache hits)
    from pipeline.student.train import TrainJob

PHASE2_CHOICES = {
    "discriminator_backbone": "the frozen teacher transformer: a float32 copy, or the "
                              "decoupled_lora student's base with adapters off",
    "discriminator_features": "image tokens of the configured main blocks; later blocks "
                              "skipped",
    "discriminator_heads": "per block: LayerNorm-MLP on tokens, linear logit plus projection "
                           "with a linear map of the mean caption feature; mean over tokens, "
                           "sum over blocks",
    "discriminator_noise": "x0 re-noised to sigma ~ U[sigma_min, sigma_max], fresh noise; the "
                           "same draw for real and fake in a discriminator step",
    "optimizers": "AdamW for the generators and for the heads, linear warm-up then constant "
                  "or cosine (optimizer.schedule)",
    "ema": "EMA of the generator weights every step; saved as ema.safetensors",
    "generator_loss": "adv_weight * ramp * adversarial + step1_weight * d(x_mid, "
                      "x_mid_teacher) + final_weight * d(x0, x0_teacher) + feature_weight * "
                      "f(x0, x0_teacher); ramp = min(1, (step - adv_start_step) / "
                      "adv_warmup_steps), 0 before adv_start_step",
}


def build_job(ctx: StageContext, phase: int, parameterization: str,
              init_weights: Path | None, lora: LoraConfig | None = None) -> TrainJob:
    from pipeline.student.launch import check_samples
    from pipeline.student.train import TrainJob

    cfg = ctx.config
    samples = ctx.inputs["sample_teacher"]
    assert isinstance(samples, TeacherSamplesManifest) and ctx.teacher is not None
    check_samples(ctx.store, samples, ctx.teacher, ctx.section.num_workers, ctx.name)
    return TrainJob(
        phase=phase,
        config=ctx.section,
        teacher=ctx.teacher,
        store_root=ctx.store.root_uri,
        samples_dir=f"{samples.stage}/{samples.key}",
        train_shards=samples.splits["train"].shards,
        eval_shards=samples.splits["eval"].shards if "eval" in samples.splits else [],
        sigma_mid=samples.teacher.sigma_mid,
        parameterization=parameterization,
        lora=lora,
        out_dir=str(ctx.store.local_path(ctx.out_dir)),
        init_weights=str(init_weights) if init_weights else None,
        mlflow_uri=mlflow_uri(cfg.tracking, ctx.store),
        mlflow_artifacts=mlflow_artifact_root(cfg.tracking, ctx.store),
        mlflow_experiment=cfg.tracking.experiment,
        run_name=f"{ctx.name}-{ctx.key}",
        tags={"twostep.stage": ctx.name, "twostep.key": ctx.key, "twostep.run": cfg.name},
    )


def train(ctx: StageContext, job: TrainJob, choices: dict[str, object]) -> StageResult:
    from pipeline.student.launch import run_training
    from pipeline.student.train import warmup_outlasts_run

    section = ctx.section
    assert isinstance(section, TrainCommonConfig)
    samples = ctx.inputs["sample_teacher"]
    assert isinstance(samples, TeacherSamplesManifest)
    ctx.log.info("%s: %d steps of batch %d on %d worker(s) (%s, %s); MLflow %s", ctx.name,
                 section.steps, section.batch_size, section.num_workers, section.strategy,
                 job.parameterization, job.mlflow_uri)
    optimizers = {f"{ctx.name}.optimizer": section.optimizer}
    if isinstance(section, TrainE2EConfig) and section.adversarial:
        optimizers[f"{ctx.name}.discriminator.optimizer"] = section.discriminator.optimizer
    for field, optimizer in optimizers.items():
        if warning := warmup_outlasts_run(optimizer, section.steps, field):
            ctx.log.warning("%s", warning)
    if (isinstance(section, TrainE2EConfig) and section.adversarial and not job.eval_shards
            and section.discriminator.eval_samples > 0):
        ctx.log.warning("%s: the teacher samples have no eval split, so the held-out "
                        "discriminator accuracy is not measured (raise "
                        "curate.eval_fraction to have it)", ctx.name)
    state = run_training(job, section.num_workers, section.cpus_per_worker, section.use_gpu)
    metrics = {k: float(v) for k, v in state.get("last", {}).items()}
    return StageResult(
        counts={"steps": state["steps"], "samples_seen": state["steps"] * section.batch_size},
        metrics=metrics,
        fields={"phase": job.phase, "parameterization": job.parameterization,
                "lora": job.lora.model_dump(mode="json") if job.lora else None,
                "sigma_mid": job.sigma_mid, "teacher_id": samples.teacher.teacher_id,
                "steps": state["steps"], "choices": choices,
                "mlflow_run_id": state.get("mlflow_run_id"), "mlflow_uri": job.mlflow_uri},
    )


def check_training_setup(cfg: DistillConfig, phase: str) -> None:
    """Pre-flight of ``phase`` (``train_init`` or ``train_e2e``), so that a run does not fail
    there after curation and sampling: a configured MLflow server is reachable, and the
    workers fit the local Ray instance that the run starts (``ray.num_cpus``, else every
    core). On a cluster (``ray.address`` or ``RAY_ADDRESS``) the launcher checks the workers
    against the cluster's resources when the phase starts."""
    import os

    from pipeline.errors import ConfigError
    from pipeline.ray_runtime import resolve_address
    from pipeline.student.launch import check_worker_cpus
    from pipeline.tracking import check_tracking_server

    check_tracking_server(cfg.tracking)
    if resolve_address(cfg.ray):
        return
    section: TrainCommonConfig = getattr(cfg, phase)
    try:
        check_worker_cpus(section.num_workers, section.cpus_per_worker,
                          cfg.ray.num_cpus or os.cpu_count() or 1,
                          "the local Ray instance (ray.num_cpus)")
    except ConfigError as exc:
        raise ConfigError(f"{phase}: {exc}") from None
