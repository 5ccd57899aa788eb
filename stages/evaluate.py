"""Stage ``evaluate``: teacher (full steps), teacher naively at 2 steps and the students at 2
steps on the eval samples, with the same noise; metrics, latency, a Markdown report with an
image grid and the training curves (:mod:`pipeline.evaluation`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import islice
from pathlib import Path

from pipeline.errors import ArtifactError, ConfigError
from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import DistillConfig, EvaluateConfig
from schemas.manifest import (
    EvalReportManifest,
    GeneratorScores,
    Manifest,
    PromptSetManifest,
    TeacherSamplesManifest,
)

PHASES = ("train_init", "train_e2e")
MIN_EVAL_SAMPLES = 2
"""evaluate scores at least this many eval samples (an FD needs two)."""


def evaluate(ctx: StageContext) -> StageResult:
    # Heavy imports here, not at module level: a cache hit imports none of them.
    import torch

    from pipeline.evaluation.generation import generate_all, generators
    from pipeline.evaluation.metrics import groups_of
    from pipeline.evaluation.report import (
        ReportContext,
        TrainingRun,
        curves_png,
        first_row_per_prompt,
        grid_png,
        render_html,
        render_report,
        tile_pngs,
    )
    from pipeline.evaluation.scoring import score_generators
    from pipeline.samples.reader import TeacherSampleReader, collate_samples

    cfg, t = ctx.section, ctx.teacher
    assert isinstance(cfg, EvaluateConfig) and t is not None
    samples = ctx.inputs["sample_teacher"]
    assert isinstance(samples, TeacherSamplesManifest)
    if "eval" not in samples.splits or samples.splits["eval"].num_samples < MIN_EVAL_SAMPLES:
        raise ArtifactError(f"the teacher samples hold fewer than {MIN_EVAL_SAMPLES} eval samples; "
                            "raise curate.eval_fraction")
    from pipeline.teachers import load_teacher

    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(t.kind, t.path, device=device)
    reader = TeacherSampleReader.from_manifest(ctx.store, samples, "eval")
    batch = collate_samples(list(islice(reader, cfg.max_samples)))
    prompts, metas = batch["prompt"], batch["meta"]
    reference = f"teacher_{samples.teacher.steps}"
    students = {"student_phase1": ctx.store.local_path(ctx.input_dirs["train_init"]),
                "student": ctx.store.local_path(ctx.input_dirs["train_e2e"]),
                **{name: Path(p) for name, p in cfg.extra_students.items()}}
    gens = generators(teacher, samples.teacher.steps, students, cfg.weights)
    out = generate_all(gens, teacher, batch, reference, batch_size=cfg.batch_size,
                       latency_batch=cfg.latency_batch, latency_repeats=cfg.latency_repeats,
                       log=ctx.log, progress=ctx.progress)
    images = out.images

    groups = groups_of([m["prompt_id"] for m in metas])
    metrics = score_generators(images, reference, prompts, [m["seed"] for m in metas], groups,
                               toy=t.kind == "toy", real_metrics=cfg.real_metrics, log=ctx.log)
    scores = [GeneratorScores(name=name, steps=gen.steps, metrics=metrics[name],
                              latency=out.latencies[name]) for name, gen in gens.items()]
    rows = first_row_per_prompt([m["prompt_id"] for m in metas], cfg.grid_prompts)
    ctx.store.write_bytes(grid_png(images, rows), ctx.out_dir, "grid.png")
    curves, links = curves_png([TrainingRun(stage, ctx.inputs[stage],  # type: ignore[arg-type]
                                            ctx.store.local_path(ctx.input_dirs[stage]))
                                for stage in PHASES])
    ctx.store.write_bytes(curves, ctx.out_dir, "losses.png")
    n_prompts = len(set(groups))
    info = ReportContext(ctx.key, len(prompts), n_prompts, device, cfg.latency_batch,
                         list(images), [prompts[r] for r in rows], links)
    report = render_report(info, scores)
    page = render_html(info, scores, {n: tile_pngs(img, rows) for n, img in images.items()},
                       curves)
    ctx.store.write_bytes(page.encode(), ctx.out_dir, "report.html")
    metrics_json = {g.name: {"steps": g.steps, **g.metrics, "latency": g.latency}
                    for g in scores}
    ctx.store.write_bytes(json.dumps(metrics_json, indent=2).encode(), ctx.out_dir,
                          "metrics.json")
    ctx.store.write_bytes(report.encode(), ctx.out_dir, "report.md")
    return StageResult(counts={"samples": len(prompts), "prompts": n_prompts,
                               "generators": len(scores)},
                       metrics={f"{g.name}.{k}": v for g in scores for k, v in g.metrics.items()},
                       timings=out.timings,
                       fields={"num_samples": len(prompts), "num_prompts": n_prompts,
                               "generators": scores, "device": device,
                               "grid_prompts": [prompts[r] for r in rows]})


def check(cfg: DistillConfig) -> None:
    from pipeline.evaluation.real import check_paths

    # evaluate scores >= 2 eval samples (FD needs two); an eval split that cannot hold them
    # would fail here only after sampling and both training phases
    if cfg.curate.eval_fraction == 0:
        raise ConfigError("curate.eval_fraction is 0: evaluate needs eval prompts; set it > 0 "
                          "(e.g. 0.05), or train without evaluating: --only curate --only "
                          "sample_teacher --only train_init --only train_e2e")
    most = cfg.sample_teacher.max_eval_prompts
    if most is not None and most * cfg.sample_teacher.eval_samples_per_prompt < MIN_EVAL_SAMPLES:
        raise ConfigError(f"sample_teacher.max_eval_prompts={most} with "
                          f"eval_samples_per_prompt={cfg.sample_teacher.eval_samples_per_prompt}"
                          f" gives evaluate fewer than {MIN_EVAL_SAMPLES} eval samples; raise "
                          f"either")
    problems = check_paths(cfg.evaluate.real_metrics)
    if problems:
        raise ConfigError(problems[0])
    for name, path in cfg.evaluate.extra_students.items():
        check_extra_student(cfg, name, Path(path))


def check_inputs(cfg: DistillConfig, outputs: Mapping[str, Manifest]) -> None:
    """As soon as curation ends: its eval split gives evaluate at least 2 eval samples (a
    small corpus at a small ``eval_fraction`` may draw none), else the run would fail here
    only after sampling and both training phases."""
    prompts = outputs.get("curate")
    if not isinstance(prompts, PromptSetManifest) or "sample_teacher" in outputs:
        return  # once the samples exist, the stage's own check reads them
    found = prompts.splits["eval"].num_prompts if "eval" in prompts.splits else 0
    most = cfg.sample_teacher.max_eval_prompts
    used = found if most is None else min(found, most)  # sample_teacher's cap
    count = used * cfg.sample_teacher.eval_samples_per_prompt
    if count < MIN_EVAL_SAMPLES:
        raise ConfigError(
            f"evaluate: the curated eval split holds {found} prompt(s), which give {count} eval "
            f"sample(s) (evaluate needs {MIN_EVAL_SAMPLES}); add prompts or raise "
            f"curate.eval_fraction (now {cfg.curate.eval_fraction:g}), or run without evaluate "
            f"(--only ...)")


def check_extra_student(cfg: DistillConfig, name: str, folder: Path) -> None:
    """``evaluate.extra_students.<name>`` is a finished training stage folder whose scored
    weights fit this run's teacher (names and shapes from the safetensors header): else the
    stage would fail on it after generating every other generator's images."""
    from pydantic import ValidationError

    from pipeline.errors import TwostepError
    from pipeline.student.launch import check_student_weights
    from schemas.config import LoraConfig
    from schemas.manifest import StudentCheckpointManifest

    field = f"evaluate.extra_students.{name}"
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ConfigError(f"{field}: {folder} is not a finished training stage folder (no "
                          f"manifest.json)")
    try:
        manifest = StudentCheckpointManifest.model_validate_json(manifest_path.read_text())
    except ValidationError:
        raise ConfigError(f"{field}: {manifest_path} is not a train_init or train_e2e "
                          f"manifest; give a training stage folder") from None
    lora = LoraConfig.model_validate(manifest.lora) if manifest.lora else None
    try:
        check_student_weights(folder / f"{cfg.evaluate.weights}.safetensors", cfg.teacher,
                              manifest.parameterization, lora)
    except TwostepError as exc:
        raise ConfigError(f"{field}: {exc}") from None


def _fingerprint(cfg: DistillConfig) -> dict[str, str]:
    from pipeline.evaluation.fingerprint import scorer_fingerprint

    return scorer_fingerprint(cfg.teacher.kind, cfg.evaluate.real_metrics,
                              cfg.evaluate.extra_students)


STAGE: StageSpec[EvalReportManifest] = StageSpec(
    name="evaluate",
    upstream=("sample_teacher", "train_init", "train_e2e"),
    manifest_type=EvalReportManifest,
    section=lambda cfg: cfg.evaluate,
    run=evaluate,
    check=check,
    check_inputs=check_inputs,
    version=4,  # 2: fd_teacher_unpaired; 3: attributes no eval prompt names left out;
    # 4: fd_teacher_inf
    fingerprint=_fingerprint,
    uses_teacher=True,
    local_files=True,
)
