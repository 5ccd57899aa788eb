"""Stage ``evaluate``: teacher (full steps), teacher naively at 2 steps and the students at 2
steps on the eval samples, with the same noise; metrics, latency, a Markdown report with an
image grid and the training curves (:mod:`pipeline.evaluation`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ArtifactError, ConfigError
from pipeline.evaluation.generation import Sampler, generate_images, measure_latency
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
from pipeline.stage import StageContext, StageResult, StageSpec
from pipeline.student.load import load_student
from pipeline.teachers.base import TeacherAdapter
from schemas.config import DistillConfig, EvaluateConfig
from schemas.manifest import (
    EvalReportManifest,
    GeneratorScores,
    StudentCheckpointManifest,
    TeacherSamplesManifest,
)

PHASES = ("train_init", "train_e2e")


def _student_folders(ctx: StageContext, cfg: EvaluateConfig) -> dict[str, Path]:
    folders = {"student_phase1": ctx.store.local_path(ctx.input_dirs["train_init"]),
               "student": ctx.store.local_path(ctx.input_dirs["train_e2e"])}
    return {**folders, **{name: Path(p) for name, p in cfg.extra_students.items()}}


def _samplers(ctx: StageContext, teacher: TeacherAdapter, steps: int,
              cfg: EvaluateConfig) -> dict[str, tuple[int, Callable[[], Sampler]]]:
    """Generator name -> (steps, a loader returning its sampler). Students load when asked,
    so only one is in memory at a time."""
    out: dict[str, tuple[int, Callable[[], Sampler]]] = {
        f"teacher_{steps}": (steps, lambda: lambda c, n: teacher.sample(c, n, steps).final),
        "teacher_2": (2, lambda: lambda c, n: teacher.sample(c, n, 2).final),
    }
    for name, folder in _student_folders(ctx, cfg).items():
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise ArtifactError(f"evaluate.extra_students.{name}: {folder} is not a finished "
                                f"training stage (no manifest.json)")
        manifest = StudentCheckpointManifest.model_validate_json(manifest_path.read_text())

        def loader(folder=folder, manifest=manifest) -> Sampler:
            student = load_student(folder, manifest, teacher, cfg.weights)
            return lambda c, n: student.sample(n.to(teacher.device), c)

        out[name] = (2, loader)
    return out


def _generate_all(ctx: StageContext, samplers: dict[str, tuple[int, Callable[[], Sampler]]],
                  teacher: TeacherAdapter, batch: dict[str, Any], reference: str):
    """Every generator's images of the eval batch (the reference's decoded from the shards'
    final latents), its latency, and the generation timings."""
    cfg = ctx.section
    assert isinstance(cfg, EvaluateConfig)
    prompts, noise = batch["prompt"], batch["noise"]
    images: dict[str, torch.Tensor] = {}
    latencies: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    k = min(cfg.latency_batch, len(prompts))
    for name, (_, load) in samplers.items():
        start = time.perf_counter()
        sampler = load()
        images[name] = generate_images(
            (lambda c, n: n) if name == reference else sampler, teacher, batch["caption"],
            batch["x0"] if name == reference else noise, cfg.batch_size)
        timings[f"generate_{name}_s"] = round(time.perf_counter() - start, 3)
        latencies[name] = measure_latency(sampler, teacher, prompts[:k], noise[:k],
                                          cfg.latency_repeats)
        del sampler  # a student's weights go before the next one loads
        ctx.progress(len(images) / len(samplers))
        ctx.log.info("evaluate: generated %d images with %s", len(prompts), name)
    return images, latencies, timings


def evaluate(ctx: StageContext) -> StageResult:
    cfg, t = ctx.section, ctx.teacher
    assert isinstance(cfg, EvaluateConfig) and t is not None
    samples = ctx.inputs["sample_teacher"]
    assert isinstance(samples, TeacherSamplesManifest)
    if "eval" not in samples.splits or samples.splits["eval"].num_samples < 2:
        raise ArtifactError("evaluate: the teacher samples hold fewer than 2 eval samples; "
                            "raise curate.eval_fraction")
    from pipeline.teachers import load_teacher

    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(t.kind, t.path, device=device)
    reader = TeacherSampleReader.from_manifest(ctx.store, samples, "eval")
    batch = collate_samples(list(islice(reader, cfg.max_samples)))
    prompts, metas = batch["prompt"], batch["meta"]
    reference = f"teacher_{samples.teacher.steps}"
    samplers = _samplers(ctx, teacher, samples.teacher.steps, cfg)
    images, latencies, timings = _generate_all(ctx, samplers, teacher, batch, reference)

    groups = [hash(m["prompt_id"]) for m in metas]
    metrics = score_generators(images, reference, prompts, [m["seed"] for m in metas], groups,
                               toy=t.kind == "toy", real_metrics=cfg.real_metrics, log=ctx.log)
    scores = [GeneratorScores(name=name, steps=steps, metrics=metrics[name],
                              latency=latencies[name]) for name, (steps, _) in samplers.items()]
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
                       timings=timings,
                       fields={"num_samples": len(prompts), "num_prompts": n_prompts,
                               "generators": scores, "device": device,
                               "grid_prompts": [prompts[r] for r in rows]})


def check(cfg: DistillConfig) -> None:
    from pipeline.evaluation.real import check_paths

    problems = check_paths(cfg.evaluate.real_metrics)
    if problems:
        raise ConfigError(problems[0])
    for name, path in cfg.evaluate.extra_students.items():
        if not (Path(path) / "manifest.json").is_file():
            raise ConfigError(f"evaluate.extra_students.{name}: {path} is not a finished "
                              f"training stage folder (no manifest.json)")


def _fingerprint(cfg: DistillConfig) -> dict[str, Any]:
    from pipeline.hashing import files_fingerprint, sha256_text

    out = {f"student:{name}": sha256_text((Path(p) / "manifest.json").read_text())
           for name, p in cfg.evaluate.extra_students.items()
           if (Path(p) / "manifest.json").is_file()}
    real = cfg.evaluate.real_metrics
    # The metric networks' weights are part of what a report means.
    if cfg.teacher.kind == "toy":
        from pipeline.toy.features import ASSET_DIR

        out.update({f"toy_features:{k}": v
                    for k, v in files_fingerprint(ASSET_DIR, ("model.safetensors",)).items()})
    if real.fid is not None and Path(real.fid.weights).is_file():
        weights = Path(real.fid.weights)
        out.update({f"fid:{k}": v for k, v in files_fingerprint(weights.parent,
                                                                  (weights.name,)).items()})
    if real.fid is not None and real.fid.reference_dir:
        out.update({f"fid_reference:{k}": v for k, v in files_fingerprint(
            Path(real.fid.reference_dir), (".",), (".png", ".jpg", ".jpeg", ".webp")).items()})
    if real.clip is not None and Path(real.clip.path).is_dir():
        out.update({f"clip:{k}": v for k, v in files_fingerprint(Path(real.clip.path),
                                                                   (".",)).items()})
    return out


STAGE: StageSpec[EvalReportManifest] = StageSpec(
    name="evaluate",
    upstream=("sample_teacher", "train_init", "train_e2e"),
    manifest_type=EvalReportManifest,
    section=lambda cfg: cfg.evaluate,
    run=evaluate,
    check=check,
    version=1,
    fingerprint=_fingerprint,
    uses_teacher=True,
)
