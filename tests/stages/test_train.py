"""Training stages on Ray Train with the real toy teacher: resume equals an uninterrupted run;
FSDP2 on 2 gloo workers equals DDP and one worker (both phases, decoupled and decoupled_lora)
and resumes exactly after a stop; problems found before training; NaN stops with a
checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import load_config
from pipeline.errors import ArtifactError, ConfigError, TwostepError
from pipeline.stage import run_stage
from pipeline.store import ArtifactStore
from pipeline.student.launch import check_resume, check_samples, check_student_weights
from stages import curate, evaluate, sample_teacher, train_e2e, train_init
from stages.registry import STAGES
from tests.metric_miniatures import build_fid_weights, build_tiny_clip

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

DATA = ["curate.sources=[{kind: toy, num_prompts: 30, seed: 2}]", "curate.eval_fraction=0.2",
        "sample_teacher.samples_per_shard=64"]
SMALL = ["train_init.steps=2", "train_init.batch_size=4", "train_init.cpus_per_worker=1",
         "train_e2e.steps=6", "train_e2e.batch_size=4", "train_e2e.cpus_per_worker=1",
         "train_e2e.shuffle_buffer=16", "train_e2e.sample_every=3", "train_e2e.log_every=2"]
FEATURE = ["train_e2e.feature_weight=0.5"]  # the perceptual term on, so its path is resumed too


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
        overrides = DATA + SMALL + FEATURE + ([f"train_e2e.stop_after={stop}"] if stop else [])
        ws = _workspace(samples_workspace, tmp_path / name)
        if stop:  # the same phase 1 (a cache hit), so that only phase 2 is compared
            shutil.copytree(tmp_path / "straight" / "ws" / "train_init", Path(ws) / "train_init")
        cfg = load_config("smoke", overrides, workspace=ws)
        store = ArtifactStore(cfg.workspace)
        samples = _upstream(cfg, store)
        phase1 = run_stage(train_init.STAGE, cfg, store, {"sample_teacher": samples},
                           allow_compute=not stop).manifest
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
    eval_cfg = load_config("smoke", DATA + SMALL + FEATURE + ["train_e2e.stop_after=3"] + real,
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
        for k in ("loss_g", "loss_d", "loss_step1", "loss_final", "loss_feature"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
        assert ra["loss_feature"] > 0
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
    # The discriminator's held-out accuracy (teacher vs student), before training and at
    # every sample grid, the same across the resume.
    heldout = [[json.loads(line) for line in (Path(r.uri) / "heldout_discriminator.jsonl")
                .read_text().splitlines()] for r in (a, b)]
    assert [h["step"] for h in heldout[1]] == [0, 3, 6]
    for ha, hb in zip(*heldout, strict=True):
        assert 0.0 <= hb["heldout_d_accuracy"] <= 1.0
        assert hb["heldout_d_margin"] == pytest.approx(ha["heldout_d_margin"], rel=1e-4,
                                                       abs=1e-6)
    history = client.get_metric_history(m.mlflow_run_id, "heldout_d_accuracy")
    assert sorted(h.step for h in history) == [0, 3, 6]
    assert all(0.0 <= r["d_accuracy"] <= 1.0 for r in lb)


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
    # more training workers than train samples: a worker would read nothing
    n = samples.splits["train"].num_samples
    check_samples(store, samples, cfg.teacher, n, "train_e2e")
    with pytest.raises(ConfigError, match=rf"train_e2e.num_workers: {n + 1} workers.* "
                                          rf"hold {n} train sample.*num_workers <= {n}"):
        check_samples(store, samples, cfg.teacher, n + 1, "train_e2e")
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


def test_a_worker_crash_is_the_workers_own_line_and_keeps_the_checkpoint(samples_workspace,
                                                                         tmp_path):
    """An error inside the (single, plain Ray task) worker that is not the project's own, here
    an OSError because losses.jsonl became a folder: the stage fails with the worker's
    exception line, not Ray's wrapper, and the checkpoint to resume from stays."""
    overrides = DATA + ["train_init.steps=4", "train_init.batch_size=4",
                        "train_init.cpus_per_worker=1", "train_init.checkpoint_every=1"]
    cfg = load_config("smoke", [*overrides, "train_init.stop_after=2"],
                      workspace=_workspace(samples_workspace, tmp_path))
    store = ArtifactStore(cfg.workspace)
    inputs = {"sample_teacher": _upstream(cfg, store)}
    with pytest.raises(TwostepError, match="stopped after step 2 of 4"):
        run_stage(train_init.STAGE, cfg, store, inputs)
    stage_dir = next(Path(cfg.workspace).glob("train_init/*"))
    (stage_dir / "losses.jsonl").unlink()
    (stage_dir / "losses.jsonl").mkdir()
    with pytest.raises(TwostepError, match=r"training workers failed: IsADirectoryError: "
                                           r"\[Errno 21\] Is a directory: .*losses.jsonl"):
        run_stage(train_init.STAGE, cfg, store, inputs)
    assert (stage_dir / "checkpoints" / "step-0000002").is_dir()
    assert not (stage_dir / "manifest.json").exists()


def test_gan_real_data_needs_the_toy_world():
    cfg = load_config("smoke", ["train_e2e.gan_real=data"])
    STAGES["train_e2e"].check(cfg)  # toy: fine


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
            if key.startswith("loss") or key in ("d_real", "d_fake", "adv_weight"):
                assert rb[key] == pytest.approx(ra[key], rel=REL, abs=1e-6), (what, ra["step"],
                                                                              key)


# decoupled trains with the adaptive adversarial weight (its gradient norms are summed over
# the ranks) and also under DDP; decoupled_lora with the fixed one, on one worker and FSDP2
# only (each layout is two Ray Train fits of about 15 s fixed cost: the suite's budget)
ADAPTIVE = ["train_e2e.adv_weighting=adaptive", "train_e2e.adv_weight=0.5"]


@pytest.mark.parametrize("parameterization,extra,layouts",
                         [("decoupled", ADAPTIVE, ("one", "ddp", "fsdp2")),
                          ("decoupled_lora", [], ("one", "fsdp2"))])
def test_fsdp2_gives_the_losses_of_ddp_and_of_one_worker(samples_workspace, tmp_path,
                                                         parameterization, extra, layouts):
    """Phase 1 and 2 on 1 worker and 2 FSDP2 workers (decoupled: also 2 DDP workers); for
    decoupled_lora also a stop after 2 steps under FSDP2 and its resume."""
    runs = {layout: _run(samples_workspace, tmp_path, parameterization, layout, extra)
            for layout in layouts}
    for phase in ("phase1", "phase2"):
        assert len(runs["one"][phase]) == 3
        _assert_same(runs["one"][phase], runs["fsdp2"][phase], f"{phase} one vs fsdp2")
        if "ddp" in runs:
            _assert_same(runs["ddp"][phase], runs["fsdp2"][phase], f"{phase} ddp vs fsdp2")
    manifest = runs["fsdp2"]["manifest"]
    assert manifest.parameterization == parameterization
    assert manifest.choices["strategy"] == "fsdp2"
    if parameterization == "decoupled_lora":
        assert manifest.lora["rank"] == 4
        _stop_and_resume_under_fsdp2(samples_workspace, tmp_path, runs["fsdp2"])


def _stop_and_resume_under_fsdp2(samples_workspace, tmp_path, straight) -> None:
    """Stop after k steps (stop_after) and resume under FSDP2: the same losses and final
    weights as the uninterrupted run; the checkpoint is refused under another layout."""
    overrides = [*DATA, *PHASE1, *PHASE2, "train_init.parameterization=decoupled_lora",
                 *[f"train_{p}.{o}" for p in ("init", "e2e") for o in LAYOUTS["fsdp2"]]]
    done = tmp_path / "decoupled_lora-fsdp2" / "ws"
    ws = Path(_workspace(samples_workspace, tmp_path / "resumed"))
    shutil.copytree(done / "train_init", ws / "train_init")
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
    with pytest.raises(ConfigError, match=r"written with 2 worker\(s\), strategy fsdp2.*this "
                                          r"run has 1 worker\(s\), strategy ddp"):
        check_resume(stage_dir, {"world_size": 1, "strategy": "ddp",
                                 "parameterization": "decoupled_lora"})
    resumed = run_stage(train_e2e.STAGE, cfg, store, inputs)
    _assert_same(straight["phase2"], _losses(Path(resumed.uri)), "resumed vs straight")
    from safetensors.torch import load_file

    a = load_file(next(done.glob("train_e2e/*/ema.safetensors")))
    b = load_file(Path(resumed.uri) / "ema.safetensors")
    assert a.keys() == b.keys() and all(".lora_" in k for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _phase2_worker(samples_workspace: Path, tmp_path: Path, name: str, overrides: list[str],
                   eval_split: bool = True):
    """A one-rank phase-2 worker on the shared teacher samples (no MLflow), built as the
    stage builds its job (``eval_split=False``: as from teacher samples without one)."""
    from pipeline.student.train import TrainJob, Worker

    cfg = load_config("smoke", DATA + SMALL + overrides,
                      workspace=_workspace(samples_workspace, tmp_path / name))
    samples = _upstream(cfg, ArtifactStore(cfg.workspace))
    out = tmp_path / name / "out"
    out.mkdir()
    job = TrainJob(phase=2, config=cfg.train_e2e, teacher=cfg.teacher,
                   store_root=str(cfg.workspace), samples_dir=f"{samples.stage}/{samples.key}",
                   train_shards=samples.splits["train"].shards,
                   eval_shards=samples.splits["eval"].shards if eval_split else [],
                   sigma_mid=samples.teacher.sigma_mid, parameterization="decoupled",
                   out_dir=str(out))
    return Worker(job, rank=0, world=1)


def test_without_eval_samples_nothing_is_called_held_out(samples_workspace, tmp_path):
    """The held-out discriminator accuracy once fell back to training samples when the
    teacher samples had no eval split, and was logged as held out all the same."""
    worker = _phase2_worker(samples_workspace, tmp_path, "no_eval",
                            ["train_e2e.steps=3", "train_e2e.sample_every=3"], eval_split=False)
    assert worker.trains_disc
    worker.run()
    files = {p.name for p in worker.out.iterdir()}
    assert {"student.safetensors", "discriminator.safetensors"} <= files
    assert "heldout_discriminator.jsonl" not in files


def test_without_the_adversarial_term_no_discriminator_runs_and_the_student_is_the_same(
        samples_workspace, tmp_path):
    """adv_weight=0 skips the discriminator (its backbone, step, draws and files) and trains
    the student exactly as a run whose adversarial term is weighted 0 (adv_start_step past
    the steps compared), bit for bit."""
    torch.manual_seed(0)
    held = _phase2_worker(samples_workspace, tmp_path, "held",
                          ["train_e2e.adv_weight=0.5", "train_e2e.adv_start_step=5"])
    torch.manual_seed(0)
    off = _phase2_worker(samples_workspace, tmp_path, "off", ["train_e2e.adv_weight=0"])
    assert held.trains_disc and held.disc is not None
    assert not off.trains_disc and off.disc is None and set(off.optimizers) == {"student"}
    batches_a, batches_b = held._batches(0), off._batches(0)
    for step in range(3):
        a, b = next(batches_a), next(batches_b)
        la, lb = held.phase2_step(step, a), off.phase2_step(step, b)
        assert "loss_d" in la and "loss_d" not in lb and "d_accuracy" not in lb
        for key in ("loss_g", "loss_step1", "loss_final"):
            assert la[key] == lb[key], (step, key)
    for name, p in held.trainable.items():
        assert torch.equal(p, off.trainable[name]), name
    off.run()  # the stage's loop to the end: no discriminator files, a finished student
    files = {p.name for p in off.out.iterdir()}
    assert {"student.safetensors", "ema.safetensors", "losses.jsonl"} <= files
    assert "discriminator.safetensors" not in files and "heldout_discriminator.jsonl" not in files
    # The perceptual term alone reads the frozen backbone's features: no heads, no optimizer.
    feature = _phase2_worker(samples_workspace, tmp_path, "feature",
                             ["train_e2e.adv_weight=0", "train_e2e.feature_weight=0.5"])
    assert feature.disc is None and feature.backbone_features is not None
    assert set(feature.optimizers) == {"student"}
    values = feature.phase2_step(0, next(feature._batches(0)))
    assert values["loss_feature"] > 0 and "loss_d" not in values
    # The decoded-image term alone: both generators learn through the frozen decoder.
    pixel = _phase2_worker(samples_workspace, tmp_path, "pixel",
                           ["train_e2e.adv_weight=0", "train_e2e.step1_weight=0",
                            "train_e2e.final_weight=0", "train_e2e.pixel_weight=1"])
    batch = next(pixel._batches(0))
    caps, noise, _, x0_t = pixel._to(batch)
    before = {n: p.detach().clone() for n, p in pixel.trainable.items()}
    with torch.no_grad():
        _, x0 = pixel.model(noise, caps)
        images, target = pixel.teacher.decode(x0), pixel.teacher.decode(x0_t)
    values = pixel.phase2_step(0, batch)
    # decode clamps to [0, 1], the loss does not: equal up to the few clamped pixels
    assert values["loss_pixel"] == pytest.approx((images - target).square().mean().item(),
                                                 rel=0.05)
    assert values["loss_g"] == pytest.approx(values["loss_pixel"])
    for g in ("g1.", "g2."):
        assert any(not torch.equal(p, before[n]) for n, p in pixel.trainable.items()
                   if n.startswith(g)), g
