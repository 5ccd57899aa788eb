"""Prefect flows: ``distill`` (every stage, in order; served as the deployment
``distill/full``), one flow per stage of :data:`stages.registry.STAGES` (``curate``, ...; made
from the registry, module attributes so that module-path entrypoints find them) for reruns,
and ``distill-ablate``. Flows only sequence stage calls; the work and its caching live in
:mod:`stages` and :mod:`pipeline`."""

from __future__ import annotations

from flows.env import apply_defaults

apply_defaults()

import logging  # noqa: E402

from prefect import (  # noqa: E402
    Flow,  # noqa: E402
    flow,
    get_run_logger,
    task,
)
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from pipeline.errors import TwostepError  # noqa: E402
from pipeline.ray_runtime import ray_session  # noqa: E402
from pipeline.stage import StageOutcome  # noqa: E402
from pipeline.store import ArtifactStore  # noqa: E402
from schemas.config import DistillConfig  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402
from stages.registry import (  # noqa: E402
    STAGES,
    PlannedStage,
    PreparedRun,
    check_ahead,
    execute,
    prepare_run,
)


@task(name="stage", task_run_name="{step.name}", cache_policy=NO_CACHE, retries=0)
def stage_task(
    step: PlannedStage,
    cfg: DistillConfig,
    store: ArtifactStore,
    outputs: dict[str, Manifest],
    force: bool,
) -> StageOutcome | State:
    from flows.artifacts import progress_reporter, publish

    reporter = progress_reporter(step.name) if step.compute else None
    try:
        outcome = execute(step, cfg, store, outputs, force, progress=reporter)
    except TwostepError as exc:
        # A user-fixable problem: fail with its one-line message, not a traceback.
        get_run_logger().error("%s failed: %s", step.name, exc)
        return Failed(message=f"{step.name}: {exc}")
    state = "cached" if outcome.cached else "computed"
    get_run_logger().info("%s %s: %s %s", step.name, state, outcome.uri, outcome.manifest.counts)
    if reporter is not None:
        reporter(1.0)  # also for a cache hit: the stage is done
    publish(outcome, store)
    return outcome


class NoEmptyTraceback(logging.Filter):
    """Prefect logs a task that returns a Failed state (a stage's one-line error) with
    ``exc_info=True`` outside any exception, which prints a bare ``NoneType: None`` after the
    line; the empty exception info is dropped, a real one kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


RunSummary = dict[str, dict[str, object]]
"""Per stage: key, cached, uri, counts."""


def run_pipeline(
    config: str,
    overrides: list[str] | None,
    workspace: str | None,
    only: list[str] | None,
    force: bool,
) -> RunSummary | State:
    """Validate the run once (:func:`~stages.registry.prepare_run`), then run it
    (:func:`run_prepared`). A user-fixable error gives a Failed state with its one line."""
    for name in ("pipeline", "stages", "twostep"):  # stage progress lines (INFO) are shown
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        run = prepare_run(config, overrides, workspace, only)
    except TwostepError as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc))
    return run_prepared(run, force)


def run_prepared(run: PreparedRun, force: bool) -> RunSummary | State:
    """Run the planned stages on one Ray session. Returns a summary per stage, or a Failed
    state carrying the one-line message of a failed stage (the flow run is then Failed)."""
    task_runs = logging.getLogger("prefect.task_runs")  # every flow's stages pass here
    if not any(isinstance(f, NoEmptyTraceback) for f in task_runs.filters):
        task_runs.addFilter(NoEmptyTraceback())
    outputs: dict[str, Manifest] = {}
    summary: RunSummary = {}
    with ray_session(run.config.ray):
        for step in run.plan:
            state = stage_task(step, run.config, run.store, outputs, force, return_state=True)
            if not state.is_completed():
                return Failed(message=state.message or f"stage {step.name} failed")
            outcome = state.result()
            outputs[step.name] = outcome.manifest
            summary[step.name] = {"key": outcome.manifest.key, "cached": outcome.cached,
                                  "uri": outcome.uri, "counts": outcome.manifest.counts}
            try:
                check_ahead(run.plan, run.config, outputs)
            except TwostepError as exc:
                get_run_logger().error("%s", exc)
                return Failed(message=str(exc))
    return summary


@flow(name="distill", log_prints=True)
def distill(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
) -> RunSummary:
    """Run the pipeline. ``config``: a preset name (``toy``, ``smoke``) or a YAML path;
    ``overrides``: ``key=value`` items; ``only``: stage names to (re)compute, their upstream
    stages must be cached; ``force``: recompute instead of using the cache."""
    return run_pipeline(config, overrides, workspace, only, force)


def _stage_flow(stage: str) -> Flow:
    """The flow that reruns ``stage`` alone (named after it; its upstream must be cached)."""
    def rerun(config: str = "toy", overrides: list[str] | None = None,
              workspace: str | None = None, force: bool = False) -> RunSummary:
        return run_pipeline(config, overrides, workspace, [stage], force)

    upstream = ", ".join(STAGES[stage].upstream)
    rerun.__name__ = rerun.__qualname__ = stage
    rerun.__doc__ = f"Rerun {stage} alone" + (f" ({upstream} must be cached)." if upstream
                                              else ".")
    return flow(rerun, name=stage, log_prints=True)


STAGE_FLOWS: dict[str, Flow] = {name: _stage_flow(name) for name in STAGES}
"""Per-stage flows by stage name (deployments ``<stage>/<stage>``)."""
globals().update(STAGE_FLOWS)  # flows.distill.curate, ...: the module-path entrypoints


@flow(name="distill-ablate", log_prints=True)
def ablate(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    variants: list[str] | None = None,
    seeds: int = 1,
) -> dict[str, list[dict[str, float]]]:
    """Train and evaluate the full method and each ablation variant (from the same teacher
    shards: upstream stages are cached), ``seeds`` training seeds each (0 .. seeds-1; with 1,
    the config's own), then write ``<workspace>/ablation/ablation.md``. Every (variant, seed)
    is cached on its own, so a stopped ablation resumes where it was."""
    from pipeline.ablation import student_metrics, write_ablation
    from stages.registry import check_variants, prepare_variant

    results: dict[str, list[dict[str, float]]] = {}
    sources: dict[str, list[str]] = {}
    def failed(problem: TwostepError) -> State:
        get_run_logger().error("%s", problem)
        return Failed(message=str(problem))

    try:
        names, left_out = check_variants(config, overrides, workspace, variants, seeds)
    except TwostepError as exc:
        return failed(exc)
    for name, reason in left_out.items():
        get_run_logger().warning("ablation: variant %s left out: %s", name, reason)
    for name in names:
        for seed in range(seeds):
            try:  # up to evaluate: a variant is scored, not exported
                run = prepare_variant(config, overrides, workspace, name,
                                      seed if seeds > 1 else None)
            except TwostepError as exc:  # e.g. another run took the workspace's lock
                return failed(exc)
            get_run_logger().info("ablation: variant %s, seed %d of %d", name, seed + 1, seeds)
            summary = run_prepared(run, False)
            if isinstance(summary, State):
                return summary
            evaluation = summary["evaluate"]
            results.setdefault(name, []).append(
                student_metrics(run.store, f"evaluate/{evaluation['key']}"))
            sources.setdefault(name, []).append(str(evaluation["uri"]))
    print(write_ablation(run.store, results, sources, left_out))
    return results
