"""The evaluation report: an image grid (one row per prompt, one column per generator), the
training curves of both phases, and the Markdown that ties them to the metrics tables."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from schemas.manifest import GeneratorScores, StudentCheckpointManifest

METRIC_ORDER = ("fd_teacher", "fd_teacher_inf", "fd_teacher_unpaired", "fd_data",
                "mean_accuracy", "size", "color", "shape", "position", "background",
                "valid_rate", "psnr", "ssim", "diversity", "fid_teacher", "fid_teacher_unpaired",
                "kid_teacher", "fid_data", "kid_data", "clip_score")
"""Columns of the metrics table, in this order, where any generator has them."""


MAX_TILE = 256
"""Report tiles are at most this many pixels a side: a 1024-px grid inlined into a page or a
Prefect artifact would be tens of MB."""


def report_tile(image: np.ndarray, side: int = 96):
    """``(H, W, 3)`` uint8 -> a PIL tile: small images upscaled (nearest, crisp) to about
    ``side`` pixels, large ones shrunk to at most :data:`MAX_TILE`."""
    from PIL import Image

    tile = Image.fromarray(image)
    if tile.width > MAX_TILE:
        height = round(tile.height * MAX_TILE / tile.width)
        return tile.resize((MAX_TILE, height), Image.LANCZOS)
    scale = max(1, side // tile.width)
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)


def grid_png(columns: dict[str, torch.Tensor], rows: list[int]) -> bytes:
    """PNG of sample ``rows`` of each generator's images ``(N, 3, H, W)`` in [0, 1], a
    generator per column, as :func:`report_tile` tiles."""
    from pipeline.generate import contact_sheet, to_uint8

    tiles = [np.asarray(report_tile(to_uint8(c[r:r + 1])[0]))
             for r in rows for c in columns.values()]
    sheet = contact_sheet(np.stack(tiles), columns=len(columns))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def first_row_per_prompt(prompt_ids: list[str], limit: int) -> list[int]:
    """Indices of the first sample of each distinct prompt, at most ``limit``."""
    rows, seen = [], set()
    for i, pid in enumerate(prompt_ids):
        if pid not in seen and len(rows) < limit:
            seen.add(pid)
            rows.append(i)
    return rows


@dataclass(frozen=True)
class TrainingRun:
    """One finished training phase: its stage name, manifest and local folder."""

    stage: str
    manifest: StudentCheckpointManifest
    folder: Path


def plotted_losses(series: dict[str, tuple[list, list]]) -> dict[str, tuple[list, list]]:
    """The loss curves worth a line on the log axis: ``loss*`` series with a positive value
    (a term that is switched off, such as ``loss_feature`` at weight 0, is all zeros)."""
    return {key: (steps, values) for key, (steps, values) in series.items()
            if key.startswith("loss") and any(v > 0 for v in values)}


def curves_png(runs: list[TrainingRun]) -> tuple[bytes, dict[str, str]]:
    """Loss curves of each run side by side (log scale), from its MLflow run, or from its
    ``losses.jsonl`` if MLflow cannot be reached; the PNG and an MLflow link per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links: dict[str, str] = {}
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        manifest = run.manifest
        series = _mlflow_series(manifest)
        if series is None:
            series = _jsonl_series(run.folder / "losses.jsonl")
        else:
            links[run.stage] = f"{manifest.mlflow_uri} run {manifest.mlflow_run_id}"
        for key, (steps, values) in sorted(plotted_losses(series).items()):
            ax.plot(steps, values, label=key, linewidth=1)
        ax.set_title(f"{run.stage} (phase {manifest.phase})")
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
        from pipeline.tracking import metric_series

        return metric_series(manifest.mlflow_uri, manifest.mlflow_run_id)
    except Exception:  # noqa: BLE001 - any tracking problem falls back to losses.jsonl
        return None


def _jsonl_series(path: Path):
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = {k for r in records for k in r if k != "step"}
    return {k: ([r["step"] for r in records if k in r], [r[k] for r in records if k in r])
            for k in keys}


@dataclass(frozen=True)
class ReportContext:
    """What the report says about the run beside the scores."""

    key: str
    num_samples: int
    num_prompts: int
    device: str
    latency_batch: int
    grid_columns: list[str]
    grid_prompts: list[str]
    links: dict[str, str]


def present_metrics(generators: list[GeneratorScores]) -> list[str]:
    """The metrics of :data:`METRIC_ORDER` that any generator has, in that order."""
    return [k for k in METRIC_ORDER if any(k in g.metrics for g in generators)]


def metric_cell(g: GeneratorScores, key: str) -> str:
    """One metric as the tables show it (4 significant digits, ``-`` when absent)."""
    return f"{g.metrics[key]:.4g}" if key in g.metrics else "-"


METRIC_LEGEND: tuple[tuple[tuple[str, ...], str], ...] = (
    (("fd_teacher", "fd_teacher_unpaired", "fd_data"),
     "FD: toy Frechet distance (feature network)"),
    (("fd_teacher",), "fd_teacher against the teacher's images from the same noise (paired: "
     "copying the teacher sample for sample scores 0)"),
    (("fd_teacher_inf",), "fd_teacher_inf: fd_teacher extrapolated to infinitely many samples "
     "(an FD of N samples is biased up by about k/N; fitted over subsets of the eval set)"),
    (("fd_teacher_unpaired", "fid_teacher_unpaired"),
     "*_unpaired against the teacher's images of the same prompts from other seeds (the "
     "teacher's own row is the floor a generator of its distribution reaches)"),
    (("fd_data", "fid_data", "kid_data"), "*_data against ground-truth renders or the "
     "reference images"),
    (("mean_accuracy", "size", "color", "shape", "position", "background"),
     "accuracy: over the prompts naming each attribute"),
    (("valid_rate",), "valid_rate: images with one crisp shape of pure colour"),
    (("psnr", "ssim"), "psnr/ssim: against the teacher's image from the same noise"),
    (("diversity",), "diversity: mean pairwise feature distance across seeds of a prompt"),
    (("fid_teacher", "kid_teacher"), "fid/kid_teacher: Inception features against the "
     "teacher's images from the same noise"),
    (("clip_score",), "clip_score: CLIP score of the images against their prompts"),
)
"""What the report's preamble says about each group of metrics, said only where the table
has one of them (a Z-Image run has no toy FD or attributes)."""


def metric_legend(present: list[str]) -> list[str]:
    """The :data:`METRIC_LEGEND` sentences for the metrics in ``present``, in order."""
    return [text for keys, text in METRIC_LEGEND if any(k in present for k in keys)]


def metrics_table(generators: list[GeneratorScores]) -> list[str]:
    """Markdown lines of the metrics table: a row per generator, the metrics any has."""
    present = present_metrics(generators)
    lines = ["| generator | steps | " + " | ".join(present) + " |",
             "|---|---|" + "---|" * len(present)]
    for g in generators:
        cells = [metric_cell(g, k) for k in present]
        lines.append(f"| {g.name} | {g.steps} | " + " | ".join(cells) + " |")
    return lines


def latency_table(generators: list[GeneratorScores]) -> list[str]:
    """Markdown lines of the latency table (seconds per image, images per second)."""
    lines = ["| generator | text encoding | denoising | decoding | total | images/s |",
             "|---|---|---|---|---|---|"]
    for g in generators:
        lat = g.latency
        lines.append(f"| {g.name} | {lat['text_encoding']:.4f} | {lat['denoising']:.4f} | "
                     f"{lat['decoding']:.4f} | {lat['total']:.4f} | {lat['images_per_s']:.1f} |")
    return lines


def render_report(info: ReportContext, generators: list[GeneratorScores]) -> str:
    """The Markdown report: metrics table, latency table, the grid and curves images."""
    lines = [f"# Evaluation `{info.key}`", "",
             f"{info.num_samples} eval samples ({info.num_prompts} prompts), the same noise "
             f"for every generator; device: {info.device}."
             + "".join(f" {part}." for part in metric_legend(present_metrics(generators))),
             "", *metrics_table(generators)]
    lines += ["", "Latency per image (seconds; median of repeats, batch "
              f"{info.latency_batch}):", "", *latency_table(generators)]
    lines += ["", f"Columns: {', '.join(info.grid_columns)}. Rows:", ""]
    lines += [f"{i + 1}. {p}" for i, p in enumerate(info.grid_prompts)]
    lines += ["", "![grid](grid.png)", "", "![training curves](losses.png)", ""]
    for stage, link in info.links.items():
        lines.append(f"- {stage}: MLflow {link}")
    return "\n".join(lines) + "\n"


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so a page or a Markdown artifact carries its images."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def inline_images(markdown: str, files: dict[str, bytes]) -> str:
    """``markdown`` with each ``](name)`` image link of ``files`` replaced by a data URI:
    a report shown away from its folder (a Prefect artifact) still shows its images."""
    for name, data in files.items():
        markdown = markdown.replace(f"]({name})", f"]({data_uri(data)})")
    return markdown


def tile_pngs(images: torch.Tensor, rows: list[int]) -> list[bytes]:
    """PNG bytes of sample ``rows`` of ``images`` ``(N, 3, H, W)`` in [0, 1], as
    :func:`report_tile` tiles."""
    from pipeline.generate import to_uint8

    out = []
    for r in rows:
        buffer = io.BytesIO()
        report_tile(to_uint8(images[r:r + 1])[0]).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def render_html(info: ReportContext, generators: list[GeneratorScores],
                tiles: dict[str, list[bytes]], curves: bytes | None = None) -> str:
    """A self-contained comparison page: per prompt, every generator's image from the same
    noise side by side (images as data URIs), then the metrics table."""
    from html import escape

    names = list(tiles)
    steps = {g.name: g.steps for g in generators}
    head = "".join(f"<th>{escape(n)}<br><small>{steps.get(n, '?')} steps</small></th>"
                   for n in names)
    rows = []
    for i, prompt in enumerate(info.grid_prompts):
        cells = "".join(f'<td><img alt="{escape(n)}: {escape(prompt)}" '
                        f'src="{data_uri(tiles[n][i])}"></td>' for n in names)
        rows.append(f"<tr><th class=prompt>{escape(prompt)}</th>{cells}</tr>")
    present = present_metrics(generators)
    metric_head = "".join(f"<th>{escape(k)}</th>" for k in present)
    metric_rows = "".join(
        f"<tr><th>{escape(g.name)}</th><td>{g.steps}</td>" + "".join(
            f"<td>{metric_cell(g, k)}</td>" for k in present)
        + f"<td>{g.latency.get('images_per_s', 0):.1f}</td></tr>"
        for g in generators)
    curves_html = (f'<h2>Training curves</h2><img alt="training curves" '
                   f'src="{data_uri(curves)}">' if curves else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>twostep evaluation {escape(info.key)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: center; }}
th.prompt {{ text-align: left; max-width: 22em; font-weight: normal; }}
img {{ image-rendering: pixelated; display: block; }}
</style></head><body>
<h1>Evaluation <code>{escape(info.key)}</code></h1>
<p>{info.num_samples} eval samples ({info.num_prompts} prompts), the same noise for every
generator, on {escape(info.device)}.</p>
<h2>Same prompt, same noise</h2>
<table id="samples"><tr><th>prompt</th>{head}</tr>
{"".join(rows)}
</table>
<h2>Metrics</h2>
<table id="metrics"><tr><th>generator</th><th>steps</th>{metric_head}<th>images/s</th></tr>
{metric_rows}
</table>
{curves_html}
</body></html>
"""
