"""Stage ``train_e2e`` (phase 2): the chained two-step student trained adversarially against
teacher images (or data), with the step-1 regularization, from the phase-1 weights. See
:mod:`pipeline.student.train`."""

from __future__ import annotations

from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import DistillConfig, LoraConfig, TrainE2EConfig
from schemas.manifest import StudentCheckpointManifest
from stages.train_common import PHASE2_CHOICES, build_job, check_training_setup, train


def train_e2e(ctx: StageContext) -> StageResult:
    from pipeline.student.launch import check_student_weights

    cfg = ctx.section
    assert isinstance(cfg, TrainE2EConfig)
    phase1 = ctx.inputs["train_init"]
    assert isinstance(phase1, StudentCheckpointManifest)
    weights = ctx.store.local_path(ctx.input_dirs["train_init"]) / (
        "ema.safetensors" if cfg.init_from == "ema" else "student.safetensors")
    lora = LoraConfig.model_validate(phase1.lora) if phase1.lora else None
    check_student_weights(weights, ctx.teacher, phase1.parameterization, lora)
    job = build_job(ctx, phase=2, parameterization=phase1.parameterization,
                    init_weights=weights, lora=lora)
    return train(ctx, job, phase2_choices(cfg))


def phase2_choices(cfg: TrainE2EConfig) -> dict[str, object]:
    """The method's choices recorded in the manifest; the discriminator's only where there is
    one (``adv_weight > 0``)."""
    common = {"end_to_end": cfg.end_to_end, "step1_weight": cfg.step1_weight,
              "regression_loss": cfg.loss, "init_from": f"phase 1 {cfg.init_from}",
              "strategy": cfg.strategy}
    if not cfg.adversarial:
        plain = {k: v for k, v in PHASE2_CHOICES.items() if not k.startswith("discriminator")}
        perceptual = "; the perceptual term uses the frozen teacher's features" \
            if cfg.feature_weight else ""
        return {**plain, **common,
                "optimizers": "AdamW for the generators, linear warm-up then constant or "
                              "cosine (optimizer.schedule)",
                "generator_loss": "step1_weight * d(x_mid, x_mid_teacher) + final_weight * "
                                  "d(x0, x0_teacher) + feature_weight * f(x0, x0_teacher)",
                "discriminator": f"none: adv_weight 0, no adversarial term{perceptual}"}
    return {**PHASE2_CHOICES, **common, "gan_real": cfg.gan_real, "adv_loss": cfg.adv_loss,
            "discriminator_layers": cfg.discriminator.layers,
            "r1": f"weight {cfg.discriminator.r1_weight}, every "
                  f"{cfg.discriminator.r1_every} steps"}


def check(cfg: DistillConfig) -> None:
    import json

    from pipeline.errors import ConfigError, NotApplicable
    from pipeline.student.discriminator import resolve_layers
    from pipeline.teachers.describe import describe_teacher

    check_training_setup(cfg, "train_e2e")
    folder = describe_teacher(cfg.teacher).folder
    n_layers = json.loads((folder / "transformer" / "config.json").read_text())["n_layers"]
    if cfg.train_e2e.reads_backbone:  # else nothing reads the layers
        try:
            resolve_layers(cfg.train_e2e.discriminator.layers, n_layers)
        except ValueError as exc:
            spread = sorted({n_layers // 4, (3 * n_layers) // 4})  # the toy's [1, 3] at 4
            raise ConfigError(f"train_e2e.discriminator.layers: {exc}; set it to blocks of "
                              f"this teacher, e.g. --set 'train_e2e.discriminator.layers="
                              f"{spread}'") from None
    if cfg.train_e2e.gan_real == "data" and cfg.teacher.kind != "toy":
        raise NotApplicable("train_e2e.gan_real=data is implemented for the toy world (ground-"
                            "truth renders); for other teachers use gan_real=teacher",
                            reason="gan_real=data needs the toy world's ground-truth renders")


STAGE: StageSpec[StudentCheckpointManifest] = StageSpec(
    name="train_e2e",
    upstream=("sample_teacher", "train_init"),
    manifest_type=StudentCheckpointManifest,
    section=lambda cfg: cfg.train_e2e,
    run=train_e2e,
    check=check,
    # 2: adv_weight 0 builds no discriminator (2026-12-06), so with feature_weight > 0 the
    # perceptual term's draws moved: a version-1 result of that config is another student
    version=2,
    uses_teacher=True,
    local_files=True,
)
