"""Stage ``evaluate``: teacher (full steps), teacher naively at 2 steps and the students at 2
steps on the eval samples, with the same noise; metrics, latency, a Markdown report with an
image grid and the training curves."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ArtifactError, ConfigError
from pipeline.evaluation.metrics import frechet_distance, mean_pairwise_distance, psnr, ssim
from pipeline.samples.reader import TeacherSampleReader, collate_samples
from pipeline.stage import StageContext, StageResult, StageSpec
from pipeline.student.launch import local_dir
from pipeline.student.load import load_student
from pipeline.teachers.base import TeacherAdapter
from schemas.config import DistillConfig, EvaluateConfig
from schemas.manifest import (
    EvalReportManifest,
    GeneratorScores,
    StudentCheckpointManifest,
    TeacherSamplesManifest,
)

Sampler = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


def _samplers(ctx: StageContext, teacher: TeacherAdapter, steps: int,
              cfg: EvaluateConfig) -> dict[str, tuple[int, Callable[[], Sampler]]]:
    """Generator name -> (steps, a loader returning its sampler(captions, noise) -> latents).
    Students load when asked, so only one is in memory at a time."""
    out: dict[str, tuple[int, Callable[[], Sampler]]] = {
        f"teacher_{steps}": (steps, lambda: lambda c, n: teacher.sample(c, n, steps).final),
        "teacher_2": (2, lambda: lambda c, n: teacher.sample(c, n, 2).final),
    }
    students = {"student_phase1": ctx.input_dirs["train_init"],
                "student": ctx.input_dirs["train_e2e"]}
    folders = {name: local_dir(ctx.store, d) for name, d in students.items()}
    folders.update({name: Path(p) for name, p in cfg.extra_students.items()})
    for name, folder in folders.items():
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


def _generate(sampler: Sampler, teacher: TeacherAdapter, captions: list[torch.Tensor],
              noise: torch.Tensor, batch: int) -> torch.Tensor:
    images = []
    with torch.inference_mode():
        for i in range(0, len(captions), batch):
            caps = [c.to(teacher.device) for c in captions[i:i + batch]]
            latents = sampler(caps, noise[i:i + batch].to(teacher.device))
            images.append(teacher.decode(latents).float().cpu())
    return torch.cat(images)


def _latency(sampler: Sampler, teacher: TeacherAdapter, prompts: list[str],
             noise: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per image for text encoding, denoising and decoding of one batch."""
    def sync() -> None:
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()

    parts: dict[str, list[float]] = {"text_encoding": [], "denoising": [], "decoding": []}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            caps = teacher.encode_prompts(prompts)
            sync()
            t1 = time.perf_counter()
            latents = sampler(caps, noise.to(teacher.device))
            sync()
            t2 = time.perf_counter()
            teacher.decode(latents)
            sync()
            t3 = time.perf_counter()
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                value_per_image = value / len(prompts)
                parts[key].append(value_per_image)
    result = {k: float(np.median(v[1:])) for k, v in parts.items()}
    result["total"] = sum(result.values())
    result["images_per_s"] = 1.0 / result["total"]
    return {k: round(v, 6) for k, v in result.items()}


def _grid(columns: dict[str, torch.Tensor], rows: list[int]) -> bytes:
    from pipeline.generate import contact_sheet, to_uint8

    tiles = [img for r in rows for img in (to_uint8(c[r:r + 1])[0] for c in columns.values())]
    first = next(iter(columns.values()))
    sheet = contact_sheet(np.stack(tiles), columns=len(columns),
                          scale=max(1, 96 // first.shape[-1]))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _curves(ctx: StageContext) -> tuple[bytes | None, dict[str, str]]:
    """Training curves from the MLflow runs of both phases (losses.jsonl if MLflow cannot be
    reached); returns the PNG and a link per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links: dict[str, str] = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stage in zip(axes, ("train_init", "train_e2e"), strict=True):
        manifest = ctx.inputs[stage]
        assert isinstance(manifest, StudentCheckpointManifest)
        series = _mlflow_series(manifest)
        if series is None:
            series = _jsonl_series(local_dir(ctx.store, ctx.input_dirs[stage]) / "losses.jsonl")
        else:
            links[stage] = f"{manifest.mlflow_uri} run {manifest.mlflow_run_id}"
        for key, (steps, values) in sorted(series.items()):
            if key.startswith("loss"):
                ax.plot(steps, values, label=key, linewidth=1)
        ax.set_title(f"{stage} (phase {manifest.phase})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue(), links


def _mlflow_series(manifest: StudentCheckpointManifest):
    if not (manifest.mlflow_uri and manifest.mlflow_run_id):
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(manifest.mlflow_uri)
        keys = client.get_run(manifest.mlflow_run_id).data.metrics.keys()
        out = {}
        for key in keys:
            history = sorted(client.get_metric_history(manifest.mlflow_run_id, key),
                             key=lambda m: m.step)
            out[key] = ([m.step for m in history], [m.value for m in history])
        return out
    except Exception:  # noqa: BLE001 - any tracking problem falls back to losses.jsonl
        return None


def _jsonl_series(path: Path):
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = {k for r in records for k in r if k != "step"}
    return {k: ([r["step"] for r in records if k in r], [r[k] for r in records if k in r])
            for k in keys}


def _report(ctx: StageContext, generators: list[GeneratorScores], n: int, prompts: int,
            device: str, grid_names: list[str], grid_prompts: list[str],
            links: dict[str, str]) -> str:
    metric_keys = ["fd_teacher", "fd_data", "mean_accuracy", "size", "color", "shape",
                   "position", "background", "valid_rate", "psnr", "ssim", "diversity",
                   "fid_teacher", "kid_teacher", "fid_data", "kid_data", "clip_score"]
    present = [k for k in metric_keys if any(k in g.metrics for g in generators)]
    lines = [f"# Evaluation `{ctx.key}`", "",
             f"{n} eval samples ({prompts} prompts), the same noise for every generator; "
             f"device: {device}. FD: toy Frechet distance (feature network); accuracy: over "
             f"the prompts naming each attribute; psnr/ssim: against the teacher's image from "
             f"the same noise; diversity: mean pairwise feature distance across seeds of a "
             f"prompt.", "",
             "| generator | steps | " + " | ".join(present) + " |",
             "|---|---|" + "---|" * len(present)]
    for g in generators:
        cells = [f"{g.metrics[k]:.4g}" if k in g.metrics else "-" for k in present]
        lines.append(f"| {g.name} | {g.steps} | " + " | ".join(cells) + " |")
    lines += ["", "Latency per image (seconds; median of repeats, batch "
              f"{ctx.section.latency_batch}):", "",
              "| generator | text encoding | denoising | decoding | total | images/s |",
              "|---|---|---|---|---|---|"]
    for g in generators:
        lat = g.latency
        lines.append(f"| {g.name} | {lat['text_encoding']:.4f} | {lat['denoising']:.4f} | "
                     f"{lat['decoding']:.4f} | {lat['total']:.4f} | {lat['images_per_s']:.1f} |")
    lines += ["", f"Columns: {', '.join(grid_names)}. Rows:", ""]
    lines += [f"{i + 1}. {p}" for i, p in enumerate(grid_prompts)]
    lines += ["", "![grid](grid.png)", "", "![training curves](losses.png)", ""]
    for stage, link in links.items():
        lines.append(f"- {stage}: MLflow {link}")
    return "\n".join(lines) + "\n"


def _real_metrics(cfg: EvaluateConfig, reference: torch.Tensor,
                  images: dict[str, torch.Tensor], prompts: list[str],
                  ctx: StageContext) -> dict[str, dict[str, float]]:
    """Generator -> values of the real-domain plugins switched on in the config (FID/KID,
    CLIP score); each plugin is loaded, used and dropped in turn."""
    from pipeline.evaluation.real import real_metric_plugins

    out: dict[str, dict[str, float]] = {name: {} for name in images}
    for plugin in real_metric_plugins(cfg.real_metrics):
        plugin.prepare(reference)
        for name, img in images.items():
            out[name].update(plugin.score(img, prompts))
        ctx.log.info("evaluate: scored %d generators with %s", len(images), plugin.name)
        del plugin
    return out


def evaluate(ctx: StageContext) -> StageResult:
    cfg = ctx.section
    assert isinstance(cfg, EvaluateConfig)
    samples = ctx.inputs["sample_teacher"]
    assert isinstance(samples, TeacherSamplesManifest)
    if "eval" not in samples.splits or samples.splits["eval"].num_samples < 2:
        raise ArtifactError("evaluate: the teacher samples hold fewer than 2 eval samples; "
                            "raise curate.eval_fraction")
    from pipeline.teachers import load_teacher

    t = ctx.config.sample_teacher.teacher
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = load_teacher(t.kind, t.path, device=device)
    reader = TeacherSampleReader.from_manifest(ctx.store, samples, "eval")
    records = list(islice(reader, cfg.max_samples))
    batch = collate_samples(records)
    prompts, noise = batch["prompt"], batch["noise"]
    groups = [hash(m["prompt_id"]) for m in batch["meta"]]
    timings: dict[str, float] = {}
    samplers = _samplers(ctx, teacher, samples.teacher.steps, cfg)
    images: dict[str, torch.Tensor] = {}
    latencies: dict[str, dict[str, float]] = {}
    k = min(cfg.latency_batch, len(prompts))
    for name, (_, load) in samplers.items():
        start = time.perf_counter()
        sampler = load()
        if name == f"teacher_{samples.teacher.steps}":  # the shards hold its final latents
            images[name] = _generate(lambda c, n: n, teacher, batch["caption"], batch["x0"],
                                     cfg.batch_size)
        else:
            images[name] = _generate(sampler, teacher, batch["caption"], noise, cfg.batch_size)
        timings[f"generate_{name}_s"] = round(time.perf_counter() - start, 3)
        latencies[name] = _latency(sampler, teacher, prompts[:k], noise[:k],
                                   cfg.latency_repeats)
        del sampler  # a student's weights go before the next one loads
        ctx.progress(len(images) / len(samplers))
        ctx.log.info("evaluate: generated %d images with %s", len(prompts), name)

    reference = images[f"teacher_{samples.teacher.steps}"]
    toy = t.kind == "toy"
    if toy:
        from pipeline.evaluation.toy import ToyScorer

        scorer = ToyScorer()
        ref_feats = scorer.features(reference)
        from pipeline.toy.render import render_toy_prompts

        truth = render_toy_prompts(prompts, [m["seed"] for m in batch["meta"]])
        truth_feats = scorer.features(truth)
    real_metrics = _real_metrics(cfg, reference, images, prompts, ctx)
    scores = []
    for name, (steps, _) in samplers.items():
        m: dict[str, float] = {}
        img = images[name]
        if toy:
            feats = scorer.features(img)
            m.update(scorer.score(img, prompts))
            m["fd_teacher"] = round(frechet_distance(feats, ref_feats), 4)
            m["fd_data"] = round(frechet_distance(feats, truth_feats), 4)
            m["diversity"] = round(mean_pairwise_distance(feats, groups), 4)
        if name != f"teacher_{samples.teacher.steps}":
            m["psnr"] = round(float(psnr(img, reference).clamp(max=100).mean()), 4)
            m["ssim"] = round(float(ssim(img, reference).mean()), 4)
        m.update(real_metrics.get(name, {}))
        scores.append(GeneratorScores(name=name, steps=steps, metrics=m,
                                      latency=latencies[name]))

    rows, seen = [], set()
    for i, meta in enumerate(batch["meta"]):
        if meta["prompt_id"] not in seen and len(rows) < cfg.grid_prompts:
            seen.add(meta["prompt_id"])
            rows.append(i)
    ctx.store.write_bytes(_grid(images, rows), ctx.out_dir, "grid.png")
    curves, links = _curves(ctx)
    if curves:
        ctx.store.write_bytes(curves, ctx.out_dir, "losses.png")
    n_prompts = len(set(groups))
    report = _report(ctx, scores, len(prompts), n_prompts, device, list(images),
                     [prompts[r] for r in rows], links)
    metrics_json = {g.name: {"steps": g.steps, **g.metrics, "latency": g.latency}
                    for g in scores}
    ctx.store.write_bytes(json.dumps(metrics_json, indent=2).encode(), ctx.out_dir,
                          "metrics.json")
    ctx.store.write_bytes(report.encode(), ctx.out_dir, "report.md")
    flat = {f"{g.name}.{k}": v for g in scores for k, v in g.metrics.items()}
    return StageResult(counts={"samples": len(prompts), "prompts": n_prompts,
                               "generators": len(scores)},
                       metrics=flat, timings=timings,
                       fields={"num_samples": len(prompts), "num_prompts": n_prompts,
                               "generators": scores, "device": device})


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
    if cfg.sample_teacher.teacher.kind == "toy":
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
    key_exclude=("batch_size",),
)
