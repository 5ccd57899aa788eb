"""Training stages on Ray Train with the real toy teacher: resume equals an uninterrupted run,
2 DDP workers equal 1 worker, problems found before training, NaN stops with a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import load_config
from pipeline.errors import ArtifactError, TwostepError
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore
from pipeline.student.launch import check_samples, check_student_weights
from stages import curate, evaluate, sample_teacher, train_e2e, train_init
from stages.registry import STAGES
from tests.metric_miniatures import build_fid_weights, build_tiny_clip

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

DATA = ["curate.sources=[{kind: toy, num_prompts: 30, seed: 2}]", "curate.eval_fraction=0.2",
        "sample_teacher.samples_per_shard=64"]
SMALL = ["train_init.steps=2", "train_init.batch_size=4", "train_init.cpus_per_worker=1",
         "train_e2e.steps=6", "train_e2e.batch_size=4", "train_e2e.cpus_per_worker=1",
         "train_e2e.shuffle_buffer=16", "train_e2e.sample_every=3", "train_e2e.log_every=2"]


@pytest.fixture(scope="module")
def samples_workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    cfg = load_config("smoke", DATA, workspace=str(root))
    store = ArtifactStore(cfg.workspace)
    prompts = run_stage(curate.STAGE, cfg, store).manifest
    run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts})
    return root


def _workspace(samples_workspace: Path, tmp_path: Path) -> str:
    """A fresh workspace holding copies of the cached curate and sample_teacher results."""
    import shutil

    ws = tmp_path / "ws"
    for stage in ("curate", "sample_teacher"):
        shutil.copytree(samples_workspace / stage, ws / stage)
    return str(ws)


def _upstream(cfg, store):
    prompts = run_stage(curate.STAGE, cfg, store, allow_compute=False).manifest
    samples = run_stage(sample_teacher.STAGE, cfg, store, {"curate": prompts},
                        allow_compute=False).manifest
    return samples


def _losses(outcome_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (outcome_dir / "losses.jsonl").read_text().splitlines()]


def test_phase2_resume_continues_with_the_uninterrupted_losses(samples_workspace, tmp_path):
    results = {}
    for name, stop in (("straight", None), ("resumed", 3)):
        overrides = DATA + SMALL + ([f"train_e2e.stop_after={stop}"] if stop else [])
        cfg = load_config("smoke", overrides, workspace=_workspace(samples_workspace,
                                                                   tmp_path / name))
        store = ArtifactStore(cfg.workspace)
        samples = _upstream(cfg, store)
        phase1 = run_stage(train_init.STAGE, cfg, store, {"sample_teacher": samples}).manifest
        inputs = {"sample_teacher": samples, "train_init": phase1}
        if stop:
            with pytest.raises(TwostepError, match="stopped after step 3 of 6"):
                run_stage(train_e2e.STAGE, cfg, store, inputs)
            stage_dir = next(Path(cfg.workspace).glob("train_e2e/*"))
            assert (stage_dir / "checkpoints" / "step-0000003").is_dir()
            assert not (stage_dir / "manifest.json").exists()
            assert len(_losses(stage_dir)) == 3
        outcome = run_stage(train_e2e.STAGE, cfg, store, inputs)
        results[name] = (outcome, store)
    # The evaluation of the resumed run: every generator scored on the same eval samples,
    # with the real-domain plugins (FID/KID, CLIP score) on locally built networks.
    real = [f"evaluate.real_metrics.fid.weights={build_fid_weights(tmp_path / 'fid.st')}",
            "evaluate.real_metrics.fid.kid_subsets=3",
            f"evaluate.real_metrics.clip.path={build_tiny_clip(tmp_path / 'clip')}"]
    eval_cfg = load_config("smoke", DATA + SMALL + ["train_e2e.stop_after=3"] + real,
                           workspace=cfg.workspace)
    report = run_stage(evaluate.STAGE, eval_cfg, store,
                       {**inputs, "train_e2e": outcome.manifest}).manifest
    assert [g.name for g in report.generators] == ["teacher_8", "teacher_2", "student_phase1",
                                                   "student"]
    teacher8, naive = report.generators[0].metrics, report.generators[1].metrics
    assert teacher8["fd_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert teacher8["fid_teacher"] == pytest.approx(0.0, abs=1e-2)
    assert naive["fd_teacher"] > 0 and 0 < naive["ssim"] < 1 and naive["fid_teacher"] > 0
    assert all({"kid_teacher", "clip_score"} <= set(g.metrics) for g in report.generators)
    assert {f.path for f in report.files} >= {"report.md", "grid.png", "losses.png",
                                              "metrics.json"}
    (a, _), (b, _) = results["straight"], results["resumed"]
    assert a.manifest.key == b.manifest.key  # stop_after is not part of the key
    la, lb = _losses(Path(a.uri)), _losses(Path(b.uri))
    assert [r["step"] for r in lb] == list(range(1, 7))
    for ra, rb in zip(la, lb, strict=True):
        for k in ("loss_g", "loss_d", "loss_step1", "loss_final"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
    m = b.manifest
    assert m.phase == 2 and m.steps == 6 and m.parameterization == "decoupled"
    assert {f.path for f in m.files} >= {"student.safetensors", "ema.safetensors",
                                         "discriminator.safetensors", "losses.jsonl",
                                         "transformer_config.json", "train_state.json"}
    assert not any(f.path.startswith("checkpoints/") for f in m.files)
    assert m.choices["gan_real"] == "teacher" and "discriminator_heads" in m.choices
    # MLflow: one run continued across the resume, every step's losses, sample grids.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(m.mlflow_uri)
    history = client.get_metric_history(m.mlflow_run_id, "loss_g")
    assert sorted(h.step for h in history) == list(range(1, 7))
    assert client.get_run(m.mlflow_run_id).data.params["adv_loss"] == "non_saturating"
    artifacts = [f.path for f in client.list_artifacts(m.mlflow_run_id, "samples")]
    assert len(artifacts) >= 2


def test_two_ddp_workers_give_the_loss_of_one_on_the_same_global_batch(samples_workspace,
                                                                        tmp_path):
    losses = {}
    for workers in (1, 2):
        overrides = DATA + ["train_init.steps=3", "train_init.batch_size=4",
                            "train_init.shuffle_buffer=0", f"train_init.num_workers={workers}",
                            "train_init.cpus_per_worker=1"]
        cfg = load_config("smoke", overrides, workspace=_workspace(samples_workspace,
                                                                   tmp_path / str(workers)))
        store = ArtifactStore(cfg.workspace)
        outcome = run_stage(train_init.STAGE, cfg, store,
                            {"sample_teacher": _upstream(cfg, store)})
        losses[workers] = [r["loss"] for r in _losses(Path(outcome.uri))]
    assert len(losses[1]) == 3
    # step 1 equal shows the same global batch; steps 2-3 equal show synchronized gradients
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)


def test_problems_are_found_before_training(samples_workspace, tmp_path):
    ws = _workspace(samples_workspace, tmp_path)
    cfg = load_config("smoke", DATA + SMALL, workspace=ws)
    store = ArtifactStore(cfg.workspace)
    samples = _upstream(cfg, store)
    # an empty shard set
    empty = samples.model_copy(deep=True)
    empty.splits["train"].shards = []
    empty.splits["train"].num_samples = 0
    with pytest.raises(ArtifactError, match="no train samples"):
        check_samples(store, empty, cfg.teacher)
    # phase-1 weights of another architecture
    bad = tmp_path / "bad.safetensors"
    save_file({"g1.x_pad_token": torch.zeros(1, 64)}, str(bad))
    with pytest.raises(ArtifactError, match=r"bad.safetensors: g1\..* (is missing|is shape)"):
        check_student_weights(bad, cfg.teacher, "decoupled")
    # a shard that is not where the manifest says
    shard = samples.splits["train"].shards[0]
    Path(store.path(f"sample_teacher/{samples.key}", shard.path)).unlink()
    with pytest.raises(ArtifactError, match=f"{shard.path}: listed in the manifest but missing"):
        run_stage(train_init.STAGE, cfg, store, {"sample_teacher": samples})
    assert not list(Path(ws).glob("train_init/*/losses.jsonl"))  # nothing trained


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(
        samples_workspace, tmp_path):
    overrides = DATA + ["train_init.steps=8", "train_init.batch_size=4",
                        "train_init.checkpoint_every=1", "train_init.optimizer.lr=1e15",
                        "train_init.optimizer.grad_clip=null"]
    cfg = load_config("smoke", overrides, workspace=_workspace(samples_workspace, tmp_path))
    store = ArtifactStore(cfg.workspace)
    with pytest.raises(TwostepError, match=r"non-finite loss .* at step \d"):
        run_stage(train_init.STAGE, cfg, store, {"sample_teacher": _upstream(cfg, store)})
    stage_dir = next(Path(cfg.workspace).glob("train_init/*"))
    assert not (stage_dir / "manifest.json").exists()
    assert list((stage_dir / "checkpoints").glob("step-*"))


def test_gan_real_data_needs_the_toy_world():
    cfg = load_config("smoke", ["train_e2e.gan_real=data"])
    STAGES["train_e2e"].check(cfg)  # toy: fine
