"""The implemented stages, in pipeline order, and the plan for a run (``--only``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError
from pipeline.ray_runtime import check_ray_address
from pipeline.stage import StageOutcome, StageSpec, cached_manifest, compute_key, run_stage
from pipeline.store import ArtifactStore
from schemas.config import STAGE_NAMES, DistillConfig
from schemas.manifest import Manifest
from stages import curate, evaluate, sample_teacher, train_e2e, train_init

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in (curate.STAGE, sample_teacher.STAGE,
                                                  train_init.STAGE, train_e2e.STAGE,
                                                  evaluate.STAGE)}
"""Implemented stages by name, in execution order (a subset of ``STAGE_NAMES``)."""


@dataclass(frozen=True)
class PlannedStage:
    spec: StageSpec
    compute: bool  # False: must be a cache hit (an upstream stage of an --only run)

    @property
    def name(self) -> str:
        return self.spec.name


def plan_run(only: list[str] | None = None) -> list[PlannedStage]:
    """Stages to visit, in order. With ``only``, those stages may compute and their upstream
    stages are loaded from the cache; without, every implemented stage may compute."""
    if not only:
        return [PlannedStage(spec, True) for spec in STAGES.values()]
    for name in only:
        if name not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
        if name not in STAGES:
            raise ConfigError(
                f"stage {name!r} is not implemented yet (implemented: {', '.join(STAGES)})"
            )
    needed = set(only)
    for spec in reversed(list(STAGES.values())):
        if spec.name in needed:
            needed.update(spec.upstream)
    return [PlannedStage(spec, spec.name in only) for spec in STAGES.values()
            if spec.name in needed]


def preflight(cfg: DistillConfig, store: ArtifactStore, plan: list[PlannedStage]) -> None:
    """Run each stage's input checks before anything starts, for stages that will compute
    (not cached). A stage whose upstream is not cached yet is checked too."""
    check_ray_address(cfg.ray)
    known: dict[str, Manifest] = {}
    for step in plan:
        inputs = {u: known[u] for u in step.spec.upstream if u in known}
        manifest = None
        if len(inputs) == len(step.spec.upstream):
            key = compute_key(step.spec, cfg, inputs)
            manifest = cached_manifest(store, f"{step.name}/{key}", step.spec.manifest_type)
        if manifest is not None:
            known[step.name] = manifest
        elif step.compute:
            step.spec.check(cfg)


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
