"""The cached stage runner: keys, cache hits, force, lineage, unfinished folders."""

from __future__ import annotations

import json
import os
from typing import Literal

import pytest

from pipeline.config import load_config
from pipeline.errors import StageDependencyError
from pipeline.stage import StageContext, StageResult, StageSpec, read_latest, run_stage
from pipeline.store import ArtifactStore
from schemas.manifest import Manifest


class CountManifest(Manifest):
    stage: Literal["produce", "consume"]
    total: int


def _spec(name: str, upstream: tuple[str, ...], calls: list[str]) -> StageSpec[CountManifest]:
    def run(ctx: StageContext) -> StageResult:
        calls.append(name)
        text = f"{name}:{ctx.section.min_words}:{sorted(ctx.inputs)}"
        ctx.store.write_bytes(text.encode(), ctx.out_dir, "out.txt")
        return StageResult(counts={"n": 1}, fields={"total": len(text)})

    return StageSpec(name=name, upstream=upstream, manifest_type=CountManifest,
                     section=lambda cfg: cfg.curate, run=run)


def test_cache_hit_force_and_lineage(tmp_path):
    calls: list[str] = []
    produce, consume = _spec("produce", (), calls), _spec("consume", ("produce",), calls)
    cfg = load_config("smoke", workspace=str(tmp_path))
    store = ArtifactStore(str(tmp_path))

    first = run_stage(produce, cfg, store)
    down = run_stage(consume, cfg, store, {"produce": first.manifest})
    assert calls == ["produce", "consume"] and not first.cached
    assert down.manifest.inputs[0].stage == "produce"
    assert down.manifest.inputs[0].key == first.manifest.key

    again = run_stage(produce, cfg, store)
    assert again.cached and calls == ["produce", "consume"]
    assert read_latest(store, "produce")["cached"] is True

    # Forcing reproduces the same bytes: downstream stays cached (content-hash lineage).
    forced = run_stage(produce, cfg, store, force=True)
    assert not forced.cached
    assert run_stage(consume, cfg, store, {"produce": forced.manifest}).cached

    other = load_config("smoke", ["curate.min_words=2"], workspace=str(tmp_path))
    changed = run_stage(produce, other, store)
    assert changed.manifest.key != first.manifest.key and not changed.cached
    with pytest.raises(StageDependencyError, match="consume has no finished result"):
        run_stage(consume, other, store, {"produce": changed.manifest}, allow_compute=False)


def test_unfinished_folder_is_recomputed(tmp_path):
    calls: list[str] = []
    produce = _spec("produce", (), calls)
    cfg = load_config("smoke", workspace=str(tmp_path))
    store = ArtifactStore(str(tmp_path))
    outcome = run_stage(produce, cfg, store)
    (tmp_path / outcome.stage_dir / "manifest.json").unlink()  # as if killed before the end
    assert not run_stage(produce, cfg, store).cached
    (tmp_path / outcome.stage_dir / "out.txt").write_text("tampered, other size")
    assert not run_stage(produce, cfg, store).cached
    assert calls == ["produce"] * 3


def test_missing_upstream_is_an_error(tmp_path):
    cfg = load_config("smoke", workspace=str(tmp_path))
    with pytest.raises(StageDependencyError, match="needs the output of produce"):
        run_stage(_spec("consume", ("produce",), []), cfg, ArtifactStore(str(tmp_path)))


def test_the_teacher_is_in_the_keys_and_context_of_the_stages_that_use_it(tmp_path,
                                                                        monkeypatch):
    from pipeline.stage import compute_key
    from stages.registry import STAGES

    base = load_config("smoke", workspace=str(tmp_path))
    other = load_config("smoke", ["teacher.dtype=bfloat16"], workspace=str(tmp_path))
    faster = load_config("smoke", ["sample_teacher.num_actors=2", "curate.batch_size=7",
                                   "train_init.log_every=3"], workspace=str(tmp_path))
    users = {name for name, spec in STAGES.items() if spec.uses_teacher}
    assert users == {"sample_teacher", "train_init", "train_e2e", "evaluate", "export"}
    elsewhere = load_config("smoke", ["teacher.steps=4"], workspace=str(tmp_path))
    for name in ("curate", "sample_teacher", "train_init", "export"):
        spec = STAGES[name]
        key = compute_key(spec, base, {})
        # dtype changes only how the teacher samples: only sample_teacher's key has it
        assert (compute_key(spec, other, {}) != key) == (name == "sample_teacher")
        assert (compute_key(spec, elsewhere, {}) != key) == (name in users)
        assert compute_key(spec, faster, {}) == key  # speed-only fields are not in keys
    # the teacher's place is not in any key (its content is: sample_teacher's fingerprint)
    from pipeline.toy.paths import TEACHER_DIR

    for path in (str(TEACHER_DIR), os.path.relpath(TEACHER_DIR)):
        named = load_config("smoke", [f"teacher.path={path}"], workspace=str(tmp_path))
        for name in users:
            assert compute_key(STAGES[name], named, {}) == compute_key(STAGES[name], base, {})

    seen = []
    spec = StageSpec(name="produce", upstream=(), manifest_type=CountManifest,
                     section=lambda cfg: cfg.curate, uses_teacher=True,
                     run=lambda ctx: (seen.append(ctx.teacher), StageResult(
                         fields={"total": 0}))[1])
    outcome = run_stage(spec, other, ArtifactStore(str(tmp_path)))
    assert seen[0].dtype == "bfloat16"
    assert outcome.manifest.run_config == {"teacher": other.teacher.model_dump(mode="json")}
    # a relative teacher path reaches the stage absolute: Ray workers run in other folders
    monkeypatch.chdir(tmp_path)
    relative = load_config("smoke", ["teacher.path=teachers/toy"], workspace=str(tmp_path))
    run_stage(spec, relative, ArtifactStore(str(tmp_path)), force=True)  # else a cache hit
    assert seen[1].path == str(tmp_path / "teachers" / "toy")


def test_a_failed_forced_rerun_keeps_the_good_result(tmp_path):
    calls: list[str] = []
    cfg = load_config("smoke", workspace=str(tmp_path))
    store = ArtifactStore(str(tmp_path))
    good = run_stage(_spec("produce", (), calls), cfg, store)
    before = (tmp_path / good.stage_dir / "out.txt").read_bytes()

    def broken(ctx: StageContext) -> StageResult:
        ctx.store.write_bytes(b"half", ctx.out_dir, "out.txt")
        raise RuntimeError("the forced rerun failed")

    spec = StageSpec(name="produce", upstream=(), manifest_type=CountManifest,
                     section=lambda cfg: cfg.curate, run=broken)
    with pytest.raises(RuntimeError, match="forced rerun failed"):
        run_stage(spec, cfg, store, force=True)
    assert (tmp_path / good.stage_dir / "out.txt").read_bytes() == before
    # ... and leaves no half-built folder beside it (the next --force starts from scratch)
    assert sorted(p.name for p in (tmp_path / "produce").iterdir()) == [good.manifest.key,
                                                                       "latest.json"]
    again = run_stage(_spec("produce", (), calls), cfg, store)
    assert again.cached and again.manifest == good.manifest
    # A forced rerun that succeeds replaces the result whole, leaving nothing beside it.
    forced = run_stage(_spec("produce", (), calls), cfg, store, force=True)
    assert not forced.cached and calls == ["produce", "produce"]
    assert sorted(p.name for p in (tmp_path / "produce").iterdir()) == [forced.manifest.key,
                                                                       "latest.json"]


def test_every_stage_key_is_computed_without_torch():
    """A fully cached `distill run` answers from the keys alone: with a toy teacher they once
    imported torch for the schedule (1.3-2 s of a 2.4 s cached run on 2 cores)."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    probe = ("import sys\n"
             "from pipeline.config import load_config\n"
             "from pipeline.stage import compute_key\n"
             "from stages.registry import STAGES\n"
             "for preset in ('smoke', 'toy'):\n"
             "    cfg = load_config(preset)\n"
             "    keys = {name: compute_key(spec, cfg, {}) for name, spec in STAGES.items()}\n"
             "assert len(keys) == 6\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _failing(write: bool, take_lock: bool = False) -> StageSpec[CountManifest]:
    """A stage that writes ``out.txt`` (or nothing), optionally loses its lock to another
    run, then fails."""
    def run(ctx: StageContext) -> StageResult:
        if write:
            ctx.store.write_bytes(b"half", ctx.out_dir, "out.txt")
        if take_lock:  # another run took the stage over: the folder is now its own
            lock = f".locks/{ctx.name}-{ctx.key}.lock"
            record = json.loads(ctx.store.read_bytes(lock))
            ctx.store.write_bytes(json.dumps({**record, "token": "another run"}).encode(), lock)
        raise RuntimeError("the stage failed")

    return StageSpec(name="produce", upstream=(), manifest_type=CountManifest,
                     section=lambda cfg: cfg.curate, run=run)


def test_a_failure_keeps_unfinished_work_and_never_touches_another_runs_folder(tmp_path):
    cfg = load_config("smoke", workspace=str(tmp_path))
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(RuntimeError, match="the stage failed"):  # written work resumes
        run_stage(_failing(write=True), cfg, store)
    (folder,) = (tmp_path / "produce").iterdir()
    assert (folder / "out.txt").read_bytes() == b"half"
    good = run_stage(_spec("produce", (), []), cfg, store)  # finishes it
    for write in (False, True):  # a failed --force whose lock another run took: left to it
        with pytest.raises(RuntimeError, match="the stage failed"):
            run_stage(_failing(write=write, take_lock=True), cfg, store, force=True)
        assert (tmp_path / "produce" / f"{good.manifest.key}.forced").is_dir()
        (tmp_path / ".locks" / f"produce-{good.manifest.key}.lock").unlink()
    assert (tmp_path / good.stage_dir / "manifest.json").is_file()
