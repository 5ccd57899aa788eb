"""Corruption on disk beyond teacher shards (those: test_sampling_faults.py): a phase-1
student's weights, a resumable checkpoint's safetensors, ``manifest.json`` and
``latest.json``. Each consumer detects it with one line naming the file and the way out, and
that way out repairs it without touching the healthy stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ArtifactError, StageDependencyError, TwostepError
from pipeline.stage import content_hash, latest_result, run_stage, verify_inputs
from pipeline.store import ArtifactStore
from schemas.manifest import StudentCheckpointManifest
from stages import curate, sample_teacher, train_e2e, train_init
from tests.reliability.conftest import distill, error_line, snapshot

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]

SETTINGS = ["curate.sources=[{kind: toy, num_prompts: 40, seed: 5}]", "curate.eval_fraction=0.2",
            "sample_teacher.samples_per_shard=16", "sample_teacher.batch_size=16",
            "sample_teacher.num_actors=1", "sample_teacher.cpus_per_actor=2",
            "teacher.dtype=float32"]


def _flip(path: Path, at: float = 0.6) -> None:
    """Change bytes inside ``path``, keeping its size (what a bad disk or copy does)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + 8] = bytes(b ^ 0xFF for b in data[i:i + 8])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """curate, sample_teacher and train_init finished; train_e2e stopped after step 2 with a
    checkpoint to resume."""
    root = tmp_path_factory.mktemp("corruption") / "ws"
    cfg = load_config("smoke", SETTINGS, workspace=str(root))
    store = ArtifactStore(cfg.workspace)
    outputs = {"curate": run_stage(curate.STAGE, cfg, store).manifest}
    outputs["sample_teacher"] = run_stage(sample_teacher.STAGE, cfg, store,
                                          {"curate": outputs["curate"]}).manifest
    outputs["train_init"] = run_stage(train_init.STAGE, cfg, store,
                                      {"sample_teacher": outputs["sample_teacher"]}).manifest
    stopped = load_config("smoke", [*SETTINGS, "train_e2e.stop_after=2"], workspace=str(root))
    with pytest.raises(TwostepError, match="stopped after step 2"):
        run_stage(train_e2e.STAGE, stopped, store,
                  {u: outputs[u] for u in train_e2e.STAGE.upstream})
    return cfg, store, outputs


def test_corrupt_student_weights_are_named_and_force_repairs_them(workspace):
    cfg, store, outputs = workspace
    phase1 = outputs["train_init"]
    folder = Path(store.path(f"train_init/{phase1.key}"))
    healthy = {name: snapshot(Path(store.path(name))) for name in ("curate", "sample_teacher")}
    original = (folder / "student.safetensors").read_bytes()
    _flip(folder / "student.safetensors")
    # The cheap cache check (sizes) still takes it; the consumer's check does not.
    with pytest.raises(ArtifactError) as caught:
        verify_inputs(store, {"train_init": phase1})
    message = str(caught.value)
    assert "\n" not in message and str(folder / "student.safetensors") in message
    assert "sha256 does not match" in message
    assert message.endswith("recompute it: distill run --only train_init --force")
    with pytest.raises(ArtifactError, match="student.safetensors: sha256 does not match"):
        run_stage(train_e2e.STAGE, cfg, store,
                  {u: outputs[u] for u in train_e2e.STAGE.upstream})
    # The way out: phase 1 computed again beside the damaged result, then swapped in.
    repaired = run_stage(train_init.STAGE, cfg, store,
                         {"sample_teacher": outputs["sample_teacher"]}, force=True)
    assert not repaired.cached and repaired.stage_dir == f"train_init/{phase1.key}"
    assert (folder / "student.safetensors").read_bytes() == original
    assert content_hash(repaired.manifest) == content_hash(phase1)  # downstream keys hold
    verify_inputs(store, {"train_init": repaired.manifest})
    assert {name: snapshot(Path(store.path(name))) for name in healthy} == healthy


def test_a_corrupt_checkpoint_is_refused_before_any_worker_starts(workspace):
    cfg, store, outputs = workspace
    (stage_dir,) = [p for p in Path(store.path("train_e2e")).iterdir() if p.is_dir()]
    (checkpoint,) = (stage_dir / "checkpoints").iterdir()
    target = checkpoint / "g1.safetensors" if (checkpoint / "g1.safetensors").exists() \
        else sorted(checkpoint.glob("*.safetensors"))[0]
    _flip(target)
    with pytest.raises(ArtifactError) as caught:
        run_stage(train_e2e.STAGE, cfg, store,
                  {u: outputs[u] for u in train_e2e.STAGE.upstream})
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and "corrupt" in message
    assert f"delete {checkpoint}" in message and "--force" in message
    assert not (stage_dir / "manifest.json").exists()
    assert (stage_dir / "checkpoints" / checkpoint.name).is_dir()  # nothing deleted for you


def test_a_corrupt_manifest_is_recomputed_in_place_with_the_same_content(workspace):
    cfg, store, outputs = workspace
    prompts = outputs["curate"]
    manifest = Path(store.path(f"curate/{prompts.key}/manifest.json"))
    manifest.write_text(manifest.read_text()[:200])  # truncated mid-JSON
    with pytest.raises(StageDependencyError) as caught:  # as `--only sample_teacher` sees it
        run_stage(curate.STAGE, cfg, store, allow_compute=False)
    message = str(caught.value)
    assert "\n" not in message and str(manifest) in message
    assert "not a valid PromptSetManifest" in message and "--force" in message
    again = run_stage(curate.STAGE, cfg, store)  # a plain rerun recomputes the stage
    assert not again.cached and content_hash(again.manifest) == content_hash(prompts)
    assert run_stage(sample_teacher.STAGE, cfg, store, {"curate": again.manifest}).cached


def test_a_corrupt_latest_json_is_one_line_and_the_next_run_rewrites_it(workspace):
    cfg, store, outputs = workspace
    latest = Path(store.path("train_init/latest.json"))
    latest.write_bytes(b"\x00\xff{not json")
    status = distill("status", "--workspace", cfg.workspace)
    line = error_line(status)
    assert str(latest) in line and "unreadable" in line and "the next run rewrites it" in line
    with pytest.raises(ArtifactError, match="unreadable"):
        latest_result(store, "train_init", StudentCheckpointManifest)
    for damaged in (b'{"key": "x"}', b"[1]"):  # JSON, but not such a record: was a traceback
        latest.write_bytes(damaged)           # (or, for [1], "never run")
        line = error_line(distill("status", "--workspace", cfg.workspace))
        assert str(latest) in line and "not a record of a stage's last run" in line
    run_stage(train_init.STAGE, cfg, store, {"sample_teacher": outputs["sample_teacher"]})
    assert json.loads(latest.read_text())["key"] == outputs["train_init"].key
    assert distill("status", "--workspace", cfg.workspace).returncode == 0
