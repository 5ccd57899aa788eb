"""Stage ``train_init`` (phase 1, per-step init): G1 learns ``eps -> x_mid_teacher`` and G2
``x_mid_teacher -> x0_teacher`` from the teacher shards, each alone. See
:mod:`pipeline.student.train`."""

from __future__ import annotations

from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import DistillConfig, TrainInitConfig
from schemas.manifest import StudentCheckpointManifest
from stages.train_common import build_job, train


def train_init(ctx: StageContext) -> StageResult:
    cfg = ctx.section
    assert isinstance(cfg, TrainInitConfig)
    job = build_job(ctx, phase=1, parameterization=cfg.parameterization, init_weights=None)
    choices = {"targets": "G1: x_mid_teacher from eps; G2: x0_teacher from x_mid_teacher",
               "loss": cfg.loss, "init": "both generators copy the teacher weights"}
    return train(ctx, job, choices)


def check(cfg: DistillConfig) -> None:
    from pipeline.teachers.describe import describe_teacher

    describe_teacher(cfg.teacher)


STAGE: StageSpec[StudentCheckpointManifest] = StageSpec(
    name="train_init",
    upstream=("sample_teacher",),
    manifest_type=StudentCheckpointManifest,
    section=lambda cfg: cfg.train_init,
    run=train_init,
    check=check,
    version=1,
    uses_teacher=True,
)
