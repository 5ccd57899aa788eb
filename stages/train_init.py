"""Stage ``train_init`` (phase 1, per-step init): G1 learns ``eps -> x_mid_teacher`` and G2
``x_mid_teacher -> x0_teacher`` from the teacher shards, each alone. See
:mod:`pipeline.student.train`."""

from __future__ import annotations

from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import DistillConfig, TrainInitConfig
from schemas.manifest import StudentCheckpointManifest
from stages.train_common import build_job, check_training_setup, train


def train_init(ctx: StageContext) -> StageResult:
    cfg = ctx.section
    assert isinstance(cfg, TrainInitConfig)
    lora = cfg.lora if cfg.parameterization == "decoupled_lora" else None
    job = build_job(ctx, phase=1, parameterization=cfg.parameterization, init_weights=None,
                    lora=lora)
    choices = {"targets": "G1: x_mid_teacher from eps; G2: x0_teacher from x_mid_teacher",
               "loss": cfg.loss, "strategy": cfg.strategy,
               "init": "both generators copy the teacher weights" if lora is None else
               "one frozen copy of the teacher; LoRA adapters step1/step2 start at zero (B=0)"}
    return train(ctx, job, choices)


def check(cfg: DistillConfig) -> None:
    from pipeline.errors import ConfigError
    from pipeline.student.launch import student_on_meta
    from pipeline.teachers.describe import describe_teacher

    describe_teacher(cfg.teacher)
    check_training_setup(cfg, "train_init")
    if cfg.train_init.parameterization == "decoupled_lora":
        try:
            student_on_meta(cfg.teacher, "decoupled_lora", cfg.train_init.lora)
        except ValueError as exc:
            raise ConfigError(f"train_init.lora: {exc}") from None


STAGE: StageSpec[StudentCheckpointManifest] = StageSpec(
    name="train_init",
    upstream=("sample_teacher",),
    manifest_type=StudentCheckpointManifest,
    section=lambda cfg: cfg.train_init,
    run=train_init,
    check=check,
    version=1,
    uses_teacher=True,
    local_files=True,
)
