"""The stages, in pipeline order (the one list: ``--only``, the per-stage flows and their
deployments, ``distill status`` and the workspace folders all come from it), and the plan and
pre-flight of a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import load_config, workspace_of
from pipeline.errors import ConfigError, NotApplicable, StageDependencyError
from pipeline.lock import check_unlocked
from pipeline.ray_runtime import check_ray_address
from pipeline.stage import (
    StageOutcome,
    StageSpec,
    cached_manifest,
    check_cache,
    compute_key,
    no_result_problem,
    run_stage,
)
from pipeline.store import ArtifactStore, unwritable_folder
from schemas.config import DistillConfig
from schemas.manifest import Manifest
from stages import curate, evaluate, export, sample_teacher, train_e2e, train_init

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (curate.STAGE, sample_teacher.STAGE,
                                                  train_init.STAGE, train_e2e.STAGE,
                                                  evaluate.STAGE, export.STAGE)}
"""Every stage by name, in execution order."""


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    compute: bool  # False: must be a cache hit (an upstream stage of an --only run)

    @property
    def name(self) -> str:
        return self.spec.name


def plan_run(only: list[str] | None = None, until: str | None = None) -> list[PlannedStage]:
    """Stages to visit, in order. With ``only``, those stages may compute and their upstream
    stages are loaded from the cache; without, every stage may compute, up to and including
    ``until`` (all of them by default)."""
    for name in [*(only or []), *([until] if until else [])]:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
    if not only:
        names = list(STAGES)
        names = names[:names.index(until) + 1] if until else names
        return [PlannedStage(STAGES[name], True) for name in names]
    needed = set(only)
    for spec in reversed(list(STAGES.values())):
        if spec.name in needed:
            needed.update(spec.upstream)
    return [PlannedStage(spec, spec.name in only) for spec in STAGES.values()
            if spec.name in needed]


def preflight(cfg: DistillConfig, store: ArtifactStore,
              plan: list[PlannedStage]) -> dict[str, Manifest]:
    """Run each stage's input checks before anything starts, for stages that will compute
    (not cached), including that a stage working on local files has a local workspace, and
    refuse a stage that another live run is computing now (its lock). A
    stage whose upstream is not cached yet is checked too. Returns the planned stages'
    cached results (the cache hits)."""
    check_ray_address(cfg.ray)
    known: dict[str, Manifest] = {}
    for step in plan:
        inputs = {u: known[u] for u in step.spec.upstream if u in known}
        manifest = key = None
        if len(inputs) == len(step.spec.upstream):
            key = compute_key(step.spec, cfg, inputs)
            manifest = cached_manifest(store, f"{step.name}/{key}", step.spec.manifest_type)
        if manifest is not None:
            known[step.name] = manifest
        elif not step.compute:  # --only left it out: say so before Prefect and Ray start
            _, rejected = check_cache(store, f"{step.name}/{key}", step.spec.manifest_type)
            raise StageDependencyError(no_result_problem(step.name, key, store, rejected))
        else:
            if step.spec.local_files:
                store.local_path()  # an object-store workspace: one line now, not after hours
            step.spec.check(cfg)
            if key is not None:  # another live run computing it: say so before any start
                check_unlocked(store, step.name, key)
    return known


def execute(
    step: PlannedStage,
    cfg: DistillConfig,
    store: ArtifactStore,
    outputs: Mapping[str, Manifest],
    force: bool,
    progress: Callable[[float], None] | None = None,
) -> StageOutcome:
    """Run one planned stage with its upstream outputs."""
    inputs = {u: outputs[u] for u in step.spec.upstream}
    return run_stage(step.spec, cfg, store, inputs, force=force and step.compute,
                     allow_compute=step.compute, progress=progress)


def check_ahead(plan: list[PlannedStage], cfg: DistillConfig,
                done: Mapping[str, Manifest]) -> None:
    """Each planned stage that has not run checks the outputs finished so far
    (:attr:`~pipeline.stage.StageSpec.check_inputs`); raises its one-line error."""
    for step in plan:
        if step.name not in done:
            step.spec.check_inputs(cfg, done)


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: its config, its plan and its workspace."""

    config: DistillConfig
    plan: list[PlannedStage]
    store: ArtifactStore
    cached: Mapping[str, Manifest]  # the planned stages that are cache hits now

def prepare_run(config: str, overrides: list[str] | None, workspace: str | None,
                only: list[str] | None, until: str | None = None) -> PreparedRun:
    """Load and validate the config, plan the stages (:func:`plan_run`) and run the
    pre-flight checks; every user mistake is one :class:`~pipeline.errors.TwostepError` here,
    before any work."""
    from pipeline.precision import resolve_auto_dtype

    # teacher.dtype auto becomes what this machine samples fastest in, before any key
    cfg = resolve_auto_dtype(load_config(config, overrides, workspace))
    plan = plan_run(only, until)
    store = ArtifactStore(workspace_of(cfg))
    if store.is_local and (problem := unwritable_folder(Path(store.root))):
        raise ConfigError(f"workspace {store.root}: {problem}; give another --workspace")
    cached = preflight(cfg, store, plan)
    return PreparedRun(cfg, plan, store, cached)


def prepare_variant(config: str, overrides: list[str] | None, workspace: str | None,
                    variant: str, seed: int | None) -> PreparedRun:
    """One (variant, seed) run of an ablation, up to ``evaluate``: the run's overrides, then the
    variant's (:data:`pipeline.ablation.VARIANTS`), then the training seed's (``None``: the
    config's own). A config problem is a :class:`~pipeline.errors.ConfigError` naming the
    variant and the way out; other problems (a locked workspace, a missing input) are raised
    as they are."""
    from pipeline.ablation import VARIANTS, seed_overrides, variant_problem

    extra = seed_overrides(seed) if seed is not None else []
    try:
        return prepare_run(config, [*(overrides or []), *VARIANTS[variant], *extra], workspace,
                           None, until="evaluate")
    except NotApplicable as exc:  # stays NotApplicable: check_variants may leave it out
        raise NotApplicable(variant_problem(variant, exc), exc.reason) from exc
    except ConfigError as exc:
        raise ConfigError(variant_problem(variant, exc)) from exc


def check_variants(config: str, overrides: list[str] | None, workspace: str | None,
                   variants: list[str] | None, seeds: int) -> tuple[list[str], dict[str, str]]:
    """Every variant of an ablation validated before any of them runs, so that a variant the
    run's config contradicts fails at once instead of after hours of the others' training
    (the seed changes no validity: seed 0 stands for all). Returns the variants to run and
    those left out with the reason: with none named, every variant this run's teacher
    supports (one it does not, :class:`~pipeline.errors.NotApplicable`, is left out); a named
    variant it does not support fails, and so does ``full``: then the run's own settings are
    what the teacher does not support."""
    from pipeline.ablation import VARIANTS

    names = list(variants or VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r} (variants: {', '.join(VARIANTS)})")
    if repeated := next((v for i, v in enumerate(names) if v in names[:i]), None):
        # a repeat would count its cached result as one more seed of the same variant
        raise ConfigError(f"variant {repeated} is given twice (--variant, or the flow's "
                          f"variants); give each once (--seeds N runs each N times)")
    left_out: dict[str, str] = {}
    for name in names:
        try:
            prepare_variant(config, overrides, workspace, name, 0 if seeds > 1 else None)
        except NotApplicable as exc:
            if variants or not VARIANTS[name]:
                raise
            left_out[name] = exc.reason
    return [n for n in names if n not in left_out], left_out


def cached_run(run: PreparedRun) -> dict[str, dict[str, object]] | None:
    """When every planned stage is a cache hit: record the hits (``latest.json``) and return
    the run's summary without starting Prefect or Ray; else None (the run has work)."""
    if len(run.cached) != len(run.plan):
        return None
    outputs: dict[str, Manifest] = {}
    summary: dict[str, dict[str, object]] = {}
    for step in run.plan:
        inputs = {u: outputs[u] for u in step.spec.upstream}
        outcome = run_stage(step.spec, run.config, run.store, inputs, allow_compute=False)
        outputs[step.name] = outcome.manifest
        summary[step.name] = {"key": outcome.manifest.key, "cached": True, "uri": outcome.uri,
                              "counts": outcome.manifest.counts}
    return summary
