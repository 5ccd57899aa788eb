"""The evaluation report's pages: the HTML comparison page renders every image in a real
browser, and inlined Markdown carries its images."""

from __future__ import annotations

import torch

from pipeline.evaluation.report import (
    METRIC_LEGEND,
    METRIC_ORDER,
    ReportContext,
    data_uri,
    grid_png,
    inline_images,
    render_html,
    render_report,
    tile_pngs,
)
from schemas.manifest import GeneratorScores
from tests.browser import evaluate_in_page

LATENCY = {"text_encoding": 0.01, "denoising": 0.02, "decoding": 0.01, "total": 0.04,
           "images_per_s": 25.0}


def _page() -> str:
    gen = torch.Generator().manual_seed(0)
    images = {name: torch.rand(3, 3, 32, 32, generator=gen)
              for name in ("teacher_8", "teacher_2", "student")}
    scores = [GeneratorScores(name=n, steps=8 if n == "teacher_8" else 2,
                              metrics={"fd_teacher": 1.5, "shape": 0.9}, latency=LATENCY)
              for n in images]
    info = ReportContext("k", 3, 3, "cpu", 1, list(images), ["a <red> circle", "b", "c"], {})
    rows = [0, 1, 2]
    return render_html(info, scores, {n: tile_pngs(img, rows) for n, img in images.items()},
                       curves=grid_png(images, rows))


def test_comparison_page_shows_every_image_in_a_browser(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(_page(), encoding="utf-8")
    found = evaluate_in_page(
        page.as_uri(),
        "({widths: Array.from(document.images).map(i => i.naturalWidth),"
        " headers: Array.from(document.querySelectorAll('#samples th')).map(t => t.innerText),"
        " metrics: document.querySelectorAll('#metrics tr').length})",
        wait_for="Array.from(document.images).every(i => i.complete)")
    assert len(found["widths"]) == 3 * 3 + 1 and min(found["widths"]) > 0
    assert found["headers"][:4] == ["prompt", "teacher_8\n8 steps", "teacher_2\n2 steps",
                                    "student\n2 steps"]
    assert "a <red> circle" in found["headers"]  # escaped, shown as text
    assert found["metrics"] == 4


def test_inlined_markdown_carries_its_images():
    png = grid_png({"a": torch.rand(1, 3, 8, 8)}, [0])
    text = inline_images("![grid](grid.png) and ![x](other.png)", {"grid.png": png})
    assert text == f"![grid]({data_uri(png)}) and ![x](other.png)"


def test_switched_off_losses_and_other_metrics_get_no_curve():
    from pipeline.evaluation.report import plotted_losses

    series = {"loss_final": ([1, 2], [0.1, 0.05]), "loss_feature": ([1, 2], [0.0, 0.0]),
              "d_real": ([1, 2], [0.3, 0.2]), "loss_adv_g": ([1, 2], [0.0, 0.7])}
    assert sorted(plotted_losses(series)) == ["loss_adv_g", "loss_final"]


def test_preamble_explains_the_metrics_of_the_table_and_no_others():
    def preamble(metrics: dict[str, float]) -> str:
        scores = [GeneratorScores(name="student", steps=2, metrics=metrics, latency=LATENCY)]
        info = ReportContext("k", 2, 2, "cpu", 1, ["student"], ["a", "b"], {})
        return render_report(info, scores).split("\n")[2]

    zimage = preamble({"psnr": 16.7, "ssim": 0.6})  # a Z-Image run: no toy feature network
    assert "psnr/ssim" in zimage and "Frechet" not in zimage and "accuracy" not in zimage
    toy = preamble({"fd_teacher": 3.6, "shape": 0.95, "psnr": 30.0})
    assert "toy Frechet distance" in toy and "accuracy" in toy and "clip_score" not in toy
    explained = {k for keys, _ in METRIC_LEGEND for k in keys}
    assert set(METRIC_ORDER) <= explained  # a new metric gets its sentence
