"""Every script in benchmarks/ runs at its tiny setting, on the shipped toy teacher, and
reports what a benchmark must: the machine (CPU model and torch's CPU capability, or the GPU)
and at least one ratio against a baseline measured in the same run. The JSON goes to a temp
folder; benchmarks/results/ is never touched. The numbers themselves are not checked (speed is
measured, not asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
RATIO_LINE = re.compile(r"^ratio \S+: \d+(\.\d+)?x \(.+\)$", re.MULTILINE)
MACHINE_LINE = re.compile(r"^machine: .+$", re.MULTILINE)


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


def run_benchmark(script: str, *args: str, tmp_path: Path, timeout: int = 300) -> dict:
    """Run ``benchmarks/<script>`` with ``args`` and ``--out`` in ``tmp_path``; check the
    output and return the JSON report."""
    out = tmp_path / f"{Path(script).stem}.json"
    before = _snapshot(RESULTS)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args, "--out", str(out)],
                          cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=timeout)
    log = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, log
    assert _snapshot(RESULTS) == before, "a tiny run must not write to benchmarks/results/"
    assert MACHINE_LINE.search(proc.stdout), log
    assert RATIO_LINE.search(proc.stdout), log
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cpu_model"] and machine["cpu_capability"], machine
    assert machine["torch"]
    ratios = report["ratios"]
    assert ratios and all(isinstance(v, (int, float)) and v > 0 for v in ratios.values()), ratios
    return report


@pytest.mark.slow
def test_curate(tmp_path: Path) -> None:
    report = run_benchmark("curate.py", "--tiny", "--cpus", "2", tmp_path=tmp_path)
    assert [r["prompts"] for r in report["results"]] == [1_000, 10_000]
    assert report["ratios"]["size"] == 10


@pytest.mark.slow
def test_sample_teacher(tmp_path: Path) -> None:
    report = run_benchmark("sample_teacher.py", "--tiny", "--cpus", "2", tmp_path=tmp_path)
    assert report["stage_1_actor"]["samples"] == 64
    assert {"stage_vs_naive_same_precision", "reader_vs_trainer"} <= set(report["ratios"])


def test_generate(tmp_path: Path) -> None:
    report = run_benchmark("generate.py", "--tiny", tmp_path=tmp_path)
    assert report["image"] == [32, 32] and report["baseline"].startswith("toy teacher")
    assert set(report["ratios"]) == {"end_to_end_batch_1"}


def test_generate_miniature_zimage(tmp_path: Path) -> None:
    report = run_benchmark("generate.py", "--tiny", "--miniature-zimage", tmp_path=tmp_path)
    assert report["teacher"] == "zimage" and report["baseline"] == "ZImagePipeline, 8 steps"
    assert set(report["ratios"]) == {"end_to_end_batch_1"}


def test_device_check(tmp_path: Path) -> None:
    report = run_benchmark("device_check.py", "--tiny", tmp_path=tmp_path)
    assert report["toy_sampling"]["latent"] == [8, 8, 8]
    assert report["zimage_config"] == "tiny_config()"
    assert "toy_8_vs_2_step" in report["ratios"]
    assert "pipeline_8_vs_2_step_64px_batch_1" in report["ratios"]  # export vs stock


def test_device_check_student(tmp_path: Path) -> None:
    report = run_benchmark("device_check_student.py", "--tiny", tmp_path=tmp_path)
    assert report["toy_sampling"]["latent"] == [8, 8, 8]
    assert "zimage_phase2_gen_step_128px" in report
    assert "stage_loop_vs_naive_pipeline" in report["ratios"]


def test_memory_plan(tmp_path: Path) -> None:
    report = run_benchmark("memory_plan.py", "--tiny", tmp_path=tmp_path)
    assert report["shape"]["params"] == 6_154_908_736  # Z-Image Turbo, counted on meta
    assert len(report["table"]) == 2 * 3 * 2 * 2  # phases x parameterizations x strategies x px
    lora = {(r["phase"], r["strategy"], r["pixels"]): r["gib"] for r in report["table"]
            if r["parameterization"] == "decoupled_lora"}
    full = {(r["phase"], r["strategy"], r["pixels"]): r["gib"] for r in report["table"]
            if r["parameterization"] == "decoupled"}
    assert lora[(2, "ddp", 512)]["1"] < full[(2, "ddp", 512)]["1"] / 5
    assert full[(2, "fsdp2", 1024)]["8"] < full[(2, "fsdp2", 1024)]["2"]
    assert set(report["ratios"]) == {f"memory_measured_over_plan_{c}" for c in (
        "phase1_decoupled", "phase2_decoupled", "phase2_decoupled_lora")}


@pytest.mark.parametrize("script", ["device_check.py", "device_check_student.py"])
def test_device_checks_need_tiny_without_a_gpu(script: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full check would run")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script)], cwd=REPO_ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--tiny is the CPU dry run" in proc.stderr


def test_device_checks_share_the_zimage_turbo_config() -> None:
    """One definition of Z-Image Turbo's transformer config (benchmarks/zimage_turbo.py)."""
    for script in ("device_check.py", "device_check_student.py"):
        text = (BENCHMARKS / script).read_text()
        assert "from zimage_turbo import" in text
        assert "dim=3840" not in text and "3840," not in text, script
