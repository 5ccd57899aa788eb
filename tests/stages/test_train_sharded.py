"""Training at scale on CPU: 2 Ray Train workers on gloo. FSDP2 gives the losses of DDP and of
one worker on the same global batch, in both phases and for decoupled and decoupled_lora;
FSDP2 stopped after k steps resumes with the uninterrupted losses; a checkpoint is resumed only
under the layout that wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError, TwostepError
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore
from stages import train_e2e, train_init
from tests.stages.test_train import DATA, _losses, _upstream, _workspace, samples_workspace

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]
__all__ = ["samples_workspace"]  # the module fixture, shared

# Tolerance: float32 sums in another order (sharded reduce-scatter vs all-reduce vs one
# process) differ by a few ulps per step and grow slowly over steps.
REL = 2e-4
PHASE1 = ["train_init.steps=3", "train_init.batch_size=4", "train_init.shuffle_buffer=0",
          "train_init.cpus_per_worker=1", "train_init.lora.rank=4",
          "train_init.optimizer.lr=1e-3"]
PHASE2 = ["train_e2e.steps=3", "train_e2e.batch_size=4", "train_e2e.shuffle_buffer=0",
          "train_e2e.cpus_per_worker=1", "train_e2e.checkpoint_every=1",
          "train_e2e.optimizer.lr=1e-3"]
LAYOUTS = {"one": ["num_workers=1", "strategy=ddp"], "ddp": ["num_workers=2", "strategy=ddp"],
           "fsdp2": ["num_workers=2", "strategy=fsdp2"]}


def _run(samples_workspace, tmp_path, parameterization: str, layout: str,
         extra: list[str] = ()) -> dict[str, list[dict]]:
    overrides = [*DATA, *PHASE1, *PHASE2, f"train_init.parameterization={parameterization}",
                 *[f"train_init.{o}" for o in LAYOUTS[layout]],
                 *[f"train_e2e.{o}" for o in LAYOUTS[layout]], *extra]
    cfg = load_config("smoke", overrides, workspace=_workspace(
        samples_workspace, tmp_path / f"{parameterization}-{layout}"))
    store = ArtifactStore(cfg.workspace)
    samples = _upstream(cfg, store)
    phase1 = run_stage(train_init.STAGE, cfg, store, {"sample_teacher": samples})
    phase2 = run_stage(train_e2e.STAGE, cfg, store,
                       {"sample_teacher": samples, "train_init": phase1.manifest})
    return {"phase1": _losses(Path(phase1.uri)), "phase2": _losses(Path(phase2.uri)),
            "manifest": phase2.manifest}


def _assert_same(a: list[dict], b: list[dict], what: str) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            if key.startswith("loss") or key in ("d_real", "d_fake"):
                assert rb[key] == pytest.approx(ra[key], rel=REL, abs=1e-6), (what, ra["step"],
                                                                              key)


@pytest.mark.parametrize("parameterization", ["decoupled", "decoupled_lora"])
def test_fsdp2_gives_the_losses_of_ddp_and_of_one_worker(samples_workspace, tmp_path,
                                                         parameterization):
    runs = {layout: _run(samples_workspace, tmp_path, parameterization, layout)
            for layout in LAYOUTS}
    for phase in ("phase1", "phase2"):
        assert len(runs["one"][phase]) == 3
        _assert_same(runs["one"][phase], runs["fsdp2"][phase], f"{phase} one vs fsdp2")
        _assert_same(runs["ddp"][phase], runs["fsdp2"][phase], f"{phase} ddp vs fsdp2")
    manifest = runs["fsdp2"]["manifest"]
    assert manifest.parameterization == parameterization
    assert manifest.choices["strategy"] == "fsdp2"
    if parameterization == "decoupled_lora":
        assert manifest.lora["rank"] == 4



def test_fsdp2_stopped_after_k_steps_resumes_with_the_uninterrupted_losses(samples_workspace,
                                                                          tmp_path):
    import shutil

    straight = _run(samples_workspace, tmp_path / "straight", "decoupled_lora", "fsdp2")
    overrides = [*DATA, *PHASE1, *PHASE2, "train_init.parameterization=decoupled_lora",
                 *[f"train_{p}.{o}" for p in ("init", "e2e") for o in LAYOUTS["fsdp2"]]]
    ws = Path(_workspace(samples_workspace, tmp_path / "resumed"))
    shutil.copytree(next((tmp_path / "straight").glob("*/ws/train_init")), ws / "train_init")
    cfg = load_config("smoke", [*overrides, "train_e2e.stop_after=2"], workspace=str(ws))
    store = ArtifactStore(cfg.workspace)
    samples = _upstream(cfg, store)
    phase1 = run_stage(train_init.STAGE, cfg, store, {"sample_teacher": samples},
                       allow_compute=False).manifest
    inputs = {"sample_teacher": samples, "train_init": phase1}
    with pytest.raises(TwostepError, match="stopped after step 2 of 3"):
        run_stage(train_e2e.STAGE, cfg, store, inputs)
    stage_dir = next(ws.glob("train_e2e/*"))
    state = json.loads((stage_dir / "checkpoints/step-0000002/state.json").read_text())
    assert state["strategy"] == "fsdp2" and state["world_size"] == 2
    # the same checkpoint resumed under another layout: one line, before any worker starts
    from pipeline.student.launch import check_resume

    with pytest.raises(ConfigError, match=r"written with 2 worker\(s\), strategy fsdp2.*this "
                                          r"run has 1 worker\(s\), strategy ddp"):
        check_resume(stage_dir, {"world_size": 1, "strategy": "ddp",
                                 "parameterization": "decoupled_lora"})
    resumed = run_stage(train_e2e.STAGE, cfg, store, inputs)
    _assert_same(straight["phase2"], _losses(Path(resumed.uri)), "resumed vs straight")
    # resumed exactly: the final weights are those of the uninterrupted run
    from safetensors.torch import load_file

    a = load_file(next((tmp_path / "straight").glob("*/ws/train_e2e/*/ema.safetensors")))
    b = load_file(Path(resumed.uri) / "ema.safetensors")
    assert a.keys() == b.keys() and all(".lora_" in k for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
