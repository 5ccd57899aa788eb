"""The sample_teacher stage with the real toy teacher: contents, determinism, caching,
resume after SIGKILL, and errors found before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ArtifactError, ConfigError
from pipeline.generate import noise_for_seeds, to_uint8
from pipeline.samples.reader import TeacherSampleReader
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore
from pipeline.teachers import load_teacher
from stages import curate, sample_teacher
from stages.registry import STAGES
from tests.processes import kill_session

pytestmark = pytest.mark.usefixtures("ray_local")
REPO_ROOT = Path(__file__).resolve().parents[2]

SMALL = ["curate.sources=[{kind: toy, num_prompts: 30, seed: 5}]", "curate.eval_fraction=0.2",
         "sample_teacher.samples_per_prompt=2", "sample_teacher.samples_per_shard=16",
         "sample_teacher.batch_size=16"]


def _run(workspace: Path, *extra: str):
    cfg = load_config("smoke", [*SMALL, *extra], workspace=str(workspace))
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest
    return store, run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})


def _by_key(store, manifest, split="train"):
    return {s["key"]: s for s in TeacherSampleReader.from_manifest(store, manifest, split,
                                                                    decode_images=True)}


def test_samples_hold_the_teacher_trajectory(tmp_path):
    store, outcome = _run(tmp_path / "a")
    m = outcome.manifest
    assert m.counts["train_samples"] == 2 * m.splits["train"].num_prompts
    assert m.counts["eval_samples"] == m.splits["eval"].num_prompts > 0  # 1 per eval prompt
    assert all(s.num_samples == 16 for s in m.splits["train"].shards[:-1])
    assert m.teacher.sigma_mid == 0.75 and m.teacher.steps == 8
    # beside each shard its sha256 (sha256sum format), and the settings that wrote them
    folder = tmp_path / "a" / "sample_teacher" / m.key
    for shard in m.splits["train"].shards + m.splits["eval"].shards:
        assert (folder / f"{shard.path}.sha256").read_text() == f"{shard.sha256}  {shard.path}\n"
    settings = json.loads((folder / "sampling-settings.json").read_text())
    assert settings["batch_size"] == 16 and settings["device"] == "cpu"
    # `auto` resolved on the actors (a CPU: float32), recorded for the manifest and a resume
    assert m.compute_dtype == settings["compute_dtype"] == "float32"
    assert {f.path for f in m.files} >= {"sampling-settings.json", "train-000000.tar.sha256"}
    samples = _by_key(store, m)
    assert len(samples) == m.counts["train_samples"]
    # Recompute one sample with the teacher: same noise from the seed, same latents, same PNG.
    s = samples[sorted(samples)[3]]
    teacher = load_teacher("toy")
    noise = noise_for_seeds([s["meta"]["seed"]], tuple(m.teacher.latent_shape))
    assert tuple(m.teacher.latent_shape) == teacher.latent_shape()
    assert torch.equal(noise[0], s["noise"])
    result = teacher.sample(teacher.encode_prompts([s["prompt"]]), noise, 8,
                            record_sigmas=(0.75,))
    torch.testing.assert_close(result.recorded[0.75][0], s["x_mid"], atol=1e-4, rtol=0)
    torch.testing.assert_close(result.final[0], s["x0"], atol=1e-4, rtol=0)
    png = torch.from_numpy(to_uint8(teacher.decode(s["x0"][None]))[0]).permute(2, 0, 1)
    assert torch.equal(png, s["image"])
    assert s["meta"]["sigmas"] == m.teacher.sigmas and s["meta"]["split"] == "train"


def test_two_runs_from_scratch_are_byte_identical_and_actor_count_does_not_matter(
        tmp_path, monkeypatch, caplog):
    """Run a calibrates its actor split (auto: 1x2 vs 2x1 threads measured on the heads of
    the shards, nothing written), then writes every shard with the faster; run b has one
    fixed actor with the same threads. Same key, same bytes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shards = "sample_teacher.samples_per_shard=8"
    with caplog.at_level("INFO"):
        store_a, a = _run(tmp_path / "a", shards)
    assert a.manifest.counts["shards"] == 8
    calibrated = json.loads((tmp_path / "cache" / "twostep" / "sampling.json").read_text())
    (record,) = calibrated.values()
    assert set(record["samples_per_s"]) == {"1", "2"} and record["threads"] in (1, 2)
    assert caplog.text.count("calibrating") == 2
    store_b, b = _run(tmp_path / "b", shards, "sample_teacher.num_actors=1",
                      f"sample_teacher.cpus_per_actor={record['threads']}")
    assert a.manifest.key == b.manifest.key  # actor count is speed-only: not in the key
    for split in ("train", "eval"):
        assert ([s.sha256 for s in a.manifest.splits[split].shards]
                == [s.sha256 for s in b.manifest.splits[split].shards])
    sa, sb = _by_key(store_a, a.manifest), _by_key(store_b, b.manifest)
    assert sa.keys() == sb.keys()
    for key in sa:
        for field in ("x_mid", "x0"):
            assert sa[key][field].numpy().tobytes() == sb[key][field].numpy().tobytes()
    cfg = load_config("smoke", [*SMALL, shards], str(tmp_path / "a"))
    again = run_stage(sample_teacher.STAGE, cfg, store_a,
                      {"curate": run_stage(curate.STAGE, cfg, store_a).manifest})
    assert again.cached
    # a new workspace on this machine uses the calibrated split without trying again
    caplog.clear()
    with caplog.at_level("INFO"):
        _run(tmp_path / "c", shards)
    assert "calibrating" not in caplog.text
    assert f"x {record['threads']} thread(s)" in caplog.text


def test_config_problems_are_found_before_work(tmp_path):
    cfg = load_config("smoke", ["sample_teacher.sigma_mid=0.7"], workspace=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^sample_teacher.sigma_mid 0.7 is not on .* "
                                          r"0\.6429, .*; the nearest: "
                                          r"sample_teacher.sigma_mid=0\.7500\)$"):
        STAGES["sample_teacher"].check(cfg)
    cfg = load_config("smoke", [f"teacher.path={tmp_path / 'nope'}"],
                      workspace=str(tmp_path))
    with pytest.raises(ArtifactError, match="folder not found"):
        STAGES["sample_teacher"].check(cfg)
    with pytest.raises(ConfigError, match="teacher.path is required"):
        load_config("smoke", ["teacher.kind=zimage"])


@pytest.mark.slow
def test_sigkill_then_rerun_writes_every_key_exactly_once(tmp_path):
    workspace = tmp_path / "ws"
    args = [sys.executable, "-m", "flows.cli", "run", "--config", "smoke", "--workspace",
            str(workspace), "--set", "curate.sources=[{kind: toy, num_prompts: 120, seed: 9}]",
            "--set", "sample_teacher.samples_per_shard=8", "--set",
            "sample_teacher.batch_size=8", "--only", "curate", "--only", "sample_teacher"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(workspace.glob("sample_teacher/*/train-*.tar"))) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        kill_session(proc)
    finally:
        kill_session(proc)
    (stage_dir,) = workspace.glob("sample_teacher/*")
    assert not (stage_dir / "manifest.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in stage_dir.glob("*.tar")}
    assert len(finished) >= 3

    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    from pipeline.precision import resolve_auto_dtype

    # the config as `distill run` resolves it (teacher.dtype auto -> this machine's choice)
    cfg = resolve_auto_dtype(load_config(
        "smoke", [args[i + 1] for i, a in enumerate(args) if a == "--set"],
        workspace=str(workspace)))
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest
    outcome = run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})
    m = outcome.manifest
    assert outcome.cached
    assert m.counts["shards_reused"] == len(finished)
    assert m.counts["shards_written"] == m.counts["shards"] - len(finished)
    assert m.compute_dtype == cfg.teacher.dtype  # the resumed run's actors and the first's
    for name, mtime in finished.items():  # complete shards were not recomputed
        assert (stage_dir / name).stat().st_mtime_ns == mtime
    assert not [p for p in stage_dir.iterdir() if ".tmp-" in p.name]
    for split in ("train", "eval"):
        keys = [s["key"] for s in TeacherSampleReader.from_manifest(store, m, split)]
        assert len(keys) == len(set(keys)) == m.splits[split].num_samples
        assert len(keys) == m.splits[split].num_prompts
    assert np.isfinite(m.metrics["samples_per_s"])
