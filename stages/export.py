"""Stage ``export``: the phase-2 student as a diffusers pipeline folder
(``export/<key>/pipeline``) with the teacher's text encoder, tokenizer and decoder, a scheduler
with the trained sigmas, the pipeline's code file and a model card (:mod:`pipeline.export`)."""

from __future__ import annotations

from pipeline.errors import ArtifactError, ConfigError
from pipeline.stage import StageContext, StageResult, StageSpec, code_version
from pipeline.teachers.describe import OTHER_TEACHER_HINT, describe_teacher, same_teacher
from schemas.config import DistillConfig, ExportConfig
from schemas.manifest import EvalReportManifest, ExportManifest, StudentCheckpointManifest

PIPELINE_DIR = "pipeline"


def export(ctx: StageContext) -> StageResult:
    # Heavy imports here, not at module level: a cache hit imports none of them.
    import torch

    from pipeline.export.card import model_card
    from pipeline.export.folder import FORMAT_VERSION, write_pipeline
    from pipeline.student.load import load_student

    cfg, t = ctx.section, ctx.teacher
    assert isinstance(cfg, ExportConfig) and t is not None
    student_manifest, evaluation = ctx.inputs["train_e2e"], ctx.inputs["evaluate"]
    assert isinstance(student_manifest, StudentCheckpointManifest)
    assert isinstance(evaluation, EvalReportManifest)
    desc = describe_teacher(t)
    if not same_teacher(student_manifest.teacher_id, desc.teacher_id):
        raise ArtifactError(f"the student was distilled from {student_manifest.teacher_id}, "
                            f"the configured teacher is {desc.teacher_id} "
                            f"({OTHER_TEACHER_HINT})")
    from pipeline.teachers import load_teacher

    # Loaded in the export's dtype (on a GPU where there is one): a 6B teacher and its two
    # student copies in float32 on the CPU would need ~100 GB.
    dtype = getattr(torch, cfg.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(t.kind, t.path, device=device, dtype=dtype)
    weights = evaluation.config.get("weights", "ema")  # what evaluate scored, the card shows
    student = load_student(ctx.store.local_path(ctx.input_dirs["train_e2e"]),
                           student_manifest, teacher, weights)
    stages = {ref.stage: ref.key for ref in student_manifest.inputs}
    stages |= {"train_e2e": student_manifest.key, "evaluate": evaluation.key, "export": ctx.key}
    import diffusers

    info = {
        "format_version": FORMAT_VERSION,
        "teacher": {"kind": t.kind, "path": t.path, "teacher_id": desc.teacher_id,
                    "steps": t.steps},
        "sigmas": [1.0, student.sigma_mid, 0.0], "parameterization": student.parameterization,
        "weights": weights, "dtype": cfg.dtype, "height": t.height, "width": t.width,
        "example_prompt": (evaluation.grid_prompts or ["a photo"])[0],
        "code_version": code_version(), "diffusers": diffusers.__version__, "stages": stages,
    }
    config = {"teacher": t.model_dump(mode="json"), "export": cfg.model_dump(mode="json"),
               "train_e2e": student_manifest.config}
    out = ctx.store.local_path(ctx.out_dir, PIPELINE_DIR)
    write_pipeline(student, teacher, out, dtype=dtype, max_shard_size=cfg.max_shard_size,
                   height=t.height, width=t.width, info=info,
                   card=model_card(info, evaluation, config),
                   extra_files={"grid.png": ctx.store.read_bytes(ctx.input_dirs["evaluate"],
                                                                 "grid.png")})
    ctx.log.info("export: wrote %s", out)
    return StageResult(counts={"transformers": 1 if student.g2 is None else 2},
                       fields={"pipeline_dir": PIPELINE_DIR,
                               "parameterization": student.parameterization,
                               "sigma_mid": student.sigma_mid, "teacher_id": desc.teacher_id,
                               "dtype": cfg.dtype})


def check(cfg: DistillConfig) -> None:
    """Before any work: the teacher folder is readable and has a decoder to export (a
    pixel-space toy teacher has none), so a run never trains for hours to fail here."""
    desc = describe_teacher(cfg.teacher)
    if desc.kind == "toy" and "autoencoder" not in {p.split("/")[0] for p in desc.fingerprint}:
        raise ConfigError(f"teacher.path {str(desc.folder)!r}: a pixel-space toy teacher (no "
                          f"autoencoder/) cannot be exported; run the stages before export "
                          f"(--only curate --only sample_teacher --only train_init --only "
                          f"train_e2e --only evaluate), or build a latent teacher (distill toy "
                          f"build-teacher)")


STAGE: StageSpec[ExportManifest] = StageSpec(
    name="export",
    upstream=("train_e2e", "evaluate"),
    manifest_type=ExportManifest,
    section=lambda cfg: cfg.export,
    run=export,
    check=check,
    version=1,
    uses_teacher=True,
    local_files=True,
)
