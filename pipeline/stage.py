"""The stage contract and the cached stage runner.

A stage is a typed function ``(StageContext) -> StageResult``: it reads its input manifests
and config section from the context, writes files under ``ctx.out_dir`` (through
``ctx.store``, one atomic unit at a time) and returns counts, metrics and its typed manifest
fields. It knows nothing of Prefect. The runner owns caching, lineage and the manifest:

- key = hash(stage name, stage version, config section, the run-level teacher section for a
  stage that declares ``uses_teacher``, content hashes of the inputs); speed-only fields
  (:func:`schemas.config.speed_only`) are left out;
- ``<workspace>/<stage>/<key>/manifest.json`` valid, with its files present: a cache hit;
- otherwise the runner takes the stage folder's lock (:mod:`pipeline.lock`: one writer per
  folder), verifies its inputs' files (:func:`verify_inputs`), the stage runs, then the
  runner lists every file (size, sha256) and writes the manifest last, atomically;
  ``<workspace>/<stage>/latest.json`` records the last run. A full disk on the way is one
  line (:func:`~pipeline.store.disk_full_is_one_line`).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from pipeline.errors import ArtifactError, StageDependencyError
from pipeline.hashing import canonical_json, sha256_text, stage_key
from pipeline.lock import stage_lock
from pipeline.store import ArtifactStore, disk_full_is_one_line
from schemas.config import (
    SAMPLING_ONLY,
    SPEED_ONLY,
    DistillConfig,
    TeacherConfig,
    cache_view,
)
from schemas.manifest import MANIFEST_FILENAME, FileEntry, InputRef, Manifest

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Manifest)
LATEST_FILENAME = "latest.json"


@dataclass
class StageResult:
    """What a stage returns; the runner adds key, files, lineage and timings."""

    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)  # typed manifest fields
    files: list[FileEntry] = field(default_factory=list)
    """Entries the stage already hashed as it wrote them; the runner reuses them instead of
    reading those files again (it still lists every file)."""


@dataclass(frozen=True)
class StageContext:
    """Everything a stage may use. ``out_dir`` is relative to ``store``. A stage reads its own
    ``section`` and, if its spec declares ``uses_teacher``, the run's ``teacher``; from
    ``config`` only the run-level infrastructure (``ray``, ``tracking``, ``name``), which
    never changes a result."""

    name: str
    key: str
    store: ArtifactStore
    out_dir: str
    config: DistillConfig
    section: BaseModel
    teacher: TeacherConfig | None
    inputs: Mapping[str, Manifest]
    input_dirs: Mapping[str, str]
    log: logging.Logger
    progress: Callable[[float], None] = lambda fraction: None
    """Report progress in [0, 1] of a long stage (the flow shows it as a Prefect progress
    artifact; outside a flow it does nothing)."""


@dataclass(frozen=True)
class StageSpec(Generic[M]):
    """Declaration of a stage: its name, upstream stages, config section, manifest type and
    the function doing the work. Bump ``version`` when the stage's output changes meaning, so
    old caches are not reused."""

    name: str
    upstream: tuple[str, ...]
    manifest_type: type[M]
    section: Callable[[DistillConfig], BaseModel]
    run: Callable[[StageContext], StageResult]
    check: Callable[[DistillConfig], None] = lambda cfg: None
    check_inputs: Callable[[DistillConfig, Mapping[str, Manifest]], None] = (
        lambda cfg, outputs: None)
    """Checks of earlier stages' outputs (``outputs``: those finished so far) that would fail
    this stage: run after each earlier stage of the run, so that the run stops there and not
    here after the stages between (:func:`stages.registry.check_ahead`)."""
    version: int = 1
    fingerprint: Callable[[DistillConfig], dict[str, str]] = lambda cfg: {}
    """Identity of inputs that are not manifests (e.g. the source files of ``curate``:
    resolved URI -> fsspec ``ukey``, which changes with size and modification time). Part of
    the cache key, so editing a source file recomputes the stage."""
    uses_teacher: bool = False
    """The stage reads the run-level ``teacher`` section: it is in the context and the key."""
    samples_teacher: bool = False
    """The stage samples with the teacher: its key also has the teacher's sampling-only
    fields (``teacher.dtype``), which do not change what the others compute."""
    local_files: bool = False
    """The stage reads or writes its artifacts as local files (training checkpoints, weights
    loaded by path, MLflow's default store): the workspace must be a local or mounted path,
    which the pre-flight checks before anything runs."""


@dataclass(frozen=True)
class StageOutcome(Generic[M]):
    manifest: M
    cached: bool
    stage_dir: str
    uri: str


def content_hash(manifest: Manifest) -> str:
    """Content identity of a stage output: its files' paths and sha256. A recomputation that
    reproduces the same bytes keeps downstream caches valid."""
    return sha256_text(canonical_json([[f.path, f.sha256] for f in manifest.files]))


@lru_cache(maxsize=1)
def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("twostep")
    except PackageNotFoundError:
        pkg = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{pkg}+g{commit}" if commit else pkg


def key_config(spec: StageSpec[Any], cfg: DistillConfig) -> dict[str, Any]:
    """The configuration a stage's key hashes: its section, and the teacher for a stage that
    uses one, without speed-only fields."""
    section = cache_view(spec.section(cfg))
    if not spec.uses_teacher:
        return section
    drop = (SPEED_ONLY,) if spec.samples_teacher else (SPEED_ONLY, SAMPLING_ONLY)
    teacher = cache_view(cfg.teacher, drop)
    # Where the teacher lies is not what it is: its files are keyed by content (sample_teacher's
    # fingerprint; downstream, the samples' teacher_id), so a moved or re-spelled folder (or
    # the shipped one named explicitly) is a cache hit. None keeps the keys of default runs.
    teacher["path"] = None
    return {"section": section, "teacher": teacher}


def compute_key(spec: StageSpec[Any], cfg: DistillConfig, inputs: Mapping[str, Manifest]) -> str:
    section = key_config(spec, cfg)
    input_hashes = {name: content_hash(m) for name, m in inputs.items()}
    input_hashes.update({f"external:{uri}": ukey for uri, ukey in spec.fingerprint(cfg).items()})
    return stage_key(spec.name, spec.version, section, input_hashes)


def no_result_problem(stage: str, key: str, store: ArtifactStore,
                      rejected: str | None = None) -> str:
    """What a run that may not compute ``stage`` says when it has no usable cached result
    (``rejected``: why the one there was not taken, from :func:`check_cache`)."""
    if rejected is not None:
        return f"stage {stage}: {rejected}; recompute it: include it in --only, with --force"
    return (f"stage {stage} has no finished result for this config (key {key} under "
            f"{store.uri(stage)}); run it first, or include it in --only")


def run_stage(
    spec: StageSpec[M],
    cfg: DistillConfig,
    store: ArtifactStore,
    inputs: Mapping[str, Manifest] | None = None,
    *,
    force: bool = False,
    allow_compute: bool = True,
    progress: Callable[[float], None] | None = None,
) -> StageOutcome[M]:
    """Return the stage's cached output or compute it (see module docstring).

    ``allow_compute=False`` turns a cache miss into :class:`StageDependencyError` (used for
    upstream stages when the user asked to run only some stages).
    """
    inputs = dict(inputs or {})
    missing = [u for u in spec.upstream if u not in inputs]
    if missing:
        raise StageDependencyError(f"stage {spec.name} needs the output of {', '.join(missing)}")
    key = compute_key(spec, cfg, inputs)
    stage_dir = f"{spec.name}/{key}"
    rejected = None
    if not force:
        cached, rejected = check_cache(store, stage_dir, spec.manifest_type)
        if cached is not None:
            log.info("%s: cache hit %s", spec.name, store.uri(stage_dir))
            _write_latest(store, spec.name, cached, cached=True)
            return StageOutcome(cached, True, stage_dir, store.uri(stage_dir))
    if not allow_compute:
        raise StageDependencyError(no_result_problem(spec.name, key, store, rejected))
    spec.check(cfg)
    with stage_lock(store, spec.name, key) as lock, disk_full_is_one_line(store, stage_dir):
        if not force:  # another run may have finished it while this one checked
            cached = cached_manifest(store, stage_dir, spec.manifest_type)
            if cached is not None:
                log.info("%s: finished meanwhile by another run %s", spec.name,
                         store.uri(stage_dir))
                _write_latest(store, spec.name, cached, cached=True)
                return StageOutcome(cached, True, stage_dir, store.uri(stage_dir))
        verify_inputs(store, inputs)
        work_dir = _prepare_work_dir(store, spec, stage_dir, force)
        ctx = StageContext(
            name=spec.name, key=key, store=store, out_dir=work_dir, config=cfg,
            section=spec.section(cfg),
            teacher=cfg.teacher.located() if spec.uses_teacher else None,
            inputs=inputs, input_dirs={name: _dir_of(m) for name, m in inputs.items()},
            log=logging.getLogger(f"twostep.stages.{spec.name}"),
            progress=progress or (lambda fraction: None),
        )
        log.info("%s: computing into %s", spec.name, store.uri(work_dir))
        start = time.perf_counter()
        try:
            result = spec.run(ctx)
            manifest = _manifest(spec, ctx, result, elapsed=time.perf_counter() - start)
            lock.ensure_held()  # never commit over a run that took the stage over
        except BaseException:
            _clean_up_failed_work(store, lock, work_dir, stage_dir)
            raise
        store.write_manifest(work_dir, manifest)
        if work_dir != stage_dir:  # a forced recomputation replaces the old result only now
            store.replace_tree(work_dir, stage_dir)
        _write_latest(store, spec.name, manifest, cached=False)
    return StageOutcome(manifest, False, stage_dir, store.uri(stage_dir))


def _clean_up_failed_work(store: ArtifactStore, lock, work_dir: str, stage_dir: str) -> None:
    """After a stage failed in ``work_dir``: a failed ``--force`` (``work_dir`` beside the
    finished ``stage_dir``) restarts from scratch next time, so its folder goes; a folder the
    failure left empty would only look like a result; unfinished work resumes, so it stays.
    Only while this run still holds the stage's lock (else the folder is another run's), and
    never at the cost of the error that brought it here (a cleanup problem is logged)."""
    try:
        if lock.held() and (work_dir != stage_dir or store.is_empty_tree(work_dir)):
            store.remove_tree(work_dir)
    except Exception as exc:  # noqa: BLE001 - the stage's own error is the one to report
        log.warning("could not remove %s after the failure: %s", store.uri(work_dir), exc)


def verify_inputs(store: ArtifactStore, inputs: Mapping[str, Manifest]) -> None:
    """Before a stage computes: every file of its inputs is as their manifests say (size and
    sha256), except those its reader verifies as it streams them
    (:meth:`Manifest.verified_when_read`); a corrupt input is one line naming the file and
    the way out (recompute that stage)."""
    for name, manifest in inputs.items():
        streamed = manifest.verified_when_read()
        store.verify_files(_dir_of(manifest), [f for f in manifest.files
                                               if f.path not in streamed], full=True,
                           way_out=f"recompute it: distill run --only {name} --force")


FORCED_SUFFIX = ".forced"
"""A forced recomputation of a finished stage builds in ``<key>.forced`` beside it."""


def _prepare_work_dir(store: ArtifactStore, spec: StageSpec[Any], stage_dir: str,
                      force: bool) -> str:
    """Where the stage computes. A forced recomputation of a finished result builds beside
    it (``<key>.forced``, restarted from scratch) and replaces it only on success, so a
    failed ``--force`` loses nothing; an unfinished or rejected folder is reused (its stage
    resumes or restarts it) after its manifest, if any, is removed."""
    if force and cached_manifest(store, stage_dir, spec.manifest_type) is not None:
        work_dir = stage_dir + FORCED_SUFFIX
        store.remove_tree(work_dir)
    else:
        work_dir = stage_dir
        if force:
            store.remove_tree(stage_dir)  # recompute everything; no stale file stays
        elif store.exists(stage_dir, MANIFEST_FILENAME):
            # A rejected cache (a file missing or changed): unfinished from now on.
            store.fs.rm(store.path(stage_dir, MANIFEST_FILENAME))
    store.makedirs(work_dir)
    return work_dir


def _manifest(spec: StageSpec[M], ctx: StageContext, result: StageResult,
              elapsed: float) -> M:
    """The finished stage's manifest: lineage, every file (size, sha256), the result."""
    store = ctx.store
    return spec.manifest_type(
        stage=spec.name,
        key=ctx.key,
        created_at=datetime.now(timezone.utc),
        code_version=code_version(),
        config=ctx.section.model_dump(mode="json"),
        run_config={"teacher": ctx.teacher.model_dump(mode="json")} if ctx.teacher else {},
        inputs=[InputRef(stage=name, key=m.key, content_sha256=content_hash(m),
                         uri=store.uri(ctx.input_dirs[name])) for name, m in ctx.inputs.items()],
        external_inputs=spec.fingerprint(ctx.config),
        files=store.file_entries(ctx.out_dir, known={f.path: f for f in result.files}),
        counts=result.counts,
        metrics=result.metrics,
        timings={**result.timings, "total_s": round(elapsed, 3)},
        **result.fields,
    )


def _dir_of(manifest: Manifest) -> str:
    return f"{manifest.stage}/{manifest.key}"


def cached_manifest(store: ArtifactStore, stage_dir: str, model: type[M]) -> M | None:
    """The finished result in ``stage_dir``, or None (absent, invalid or with missing files)."""
    return check_cache(store, stage_dir, model)[0]


def check_cache(store: ArtifactStore, stage_dir: str,
                model: type[M]) -> tuple[M | None, str | None]:
    """``(manifest, None)`` for a finished result in ``stage_dir`` (its manifest valid, every
    file present with its size: cheap, so the sha256 is checked by consumers); ``(None,
    why)`` for a rejected one; ``(None, None)`` when there is none."""
    if not store.exists(stage_dir, MANIFEST_FILENAME):
        return None, None
    try:
        return store.read_manifest(stage_dir, model, verify="size"), None
    except ArtifactError as exc:
        log.warning("ignoring the cached result: %s", exc)
        return None, str(exc)


def _write_latest(store: ArtifactStore, stage: str, manifest: Manifest, cached: bool) -> None:
    record = {
        "stage": stage,
        "key": manifest.key,
        "uri": store.uri(stage, manifest.key),
        "cached": cached,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_at": manifest.created_at.isoformat(timespec="seconds"),
        "counts": manifest.counts,
    }
    store.write_bytes(json.dumps(record, indent=2).encode(), stage, LATEST_FILENAME)


# what _write_latest writes and its readers use
_LATEST_FIELDS: dict[str, type] = {
    "key": str, "cached": bool, "at": str, "created_at": str, "counts": dict}


def read_latest(store: ArtifactStore, stage: str) -> dict[str, Any] | None:
    """The record of the stage's last run in this workspace, or None; an
    :class:`ArtifactError` with the way out when it is damaged."""
    if not store.exists(stage, LATEST_FILENAME):
        return None
    where = store.uri(stage, LATEST_FILENAME)
    try:
        record = json.loads(store.read_bytes(stage, LATEST_FILENAME))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ArtifactError(f"{where}: unreadable ({exc}); delete it, the next run rewrites "
                            f"it") from None
    wrong = next((name for name, kind in _LATEST_FIELDS.items()
                  if not isinstance(record, dict) or not isinstance(record.get(name), kind)),
                 None)
    if wrong is not None:
        raise ArtifactError(f"{where}: not a record of a stage's last run ({wrong!r} missing "
                            f"or of the wrong type); delete it, the next run rewrites it")
    return record


def latest_result(store: ArtifactStore, stage: str, model: type[M]) -> tuple[M, str]:
    """The manifest and folder of the stage's last run in this workspace, which must be
    finished (its manifest valid and its files present); an :class:`ArtifactError` naming the
    workspace and the way out otherwise."""
    record = read_latest(store, stage)
    if record is None:
        raise ArtifactError(f"{store.uri(stage)}: no {stage} has run in workspace "
                            f"{store.root_uri} (run distill run first)")
    stage_dir = f"{stage}/{record['key']}"
    manifest = cached_manifest(store, stage_dir, model)
    if manifest is None:
        raise ArtifactError(f"{store.uri(stage_dir)}: the last {stage} of workspace "
                            f"{store.root_uri} did not finish (rerun distill run)")
    return manifest, stage_dir
