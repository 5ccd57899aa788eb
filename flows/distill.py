"""Prefect flows: ``distill`` (every stage, in order; it will be served as the deployment
``distill/full``) and one flow per stage (``curate``, ...) for reruns. Flows only sequence
stage calls; the work and its caching live in :mod:`stages` and :mod:`pipeline`."""

from __future__ import annotations

from flows.env import apply_defaults

apply_defaults()

import logging  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from pipeline.config import load_config, workspace_of  # noqa: E402
from pipeline.errors import TwostepError  # noqa: E402
from pipeline.ray_runtime import ray_session  # noqa: E402
from pipeline.stage import StageOutcome  # noqa: E402
from pipeline.store import ArtifactStore  # noqa: E402
from schemas.config import DistillConfig  # noqa: E402
from schemas.manifest import Manifest  # noqa: E402
from stages.registry import PlannedStage, execute, plan_run, preflight  # noqa: E402


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


def run_pipeline(
    config: str,
    overrides: list[str] | None,
    workspace: str | None,
    only: list[str] | None,
    force: bool,
) -> dict[str, dict[str, object]] | State:
    """Load and validate the config, then run the planned stages on one Ray session.
    Returns a summary per stage (key, cached, uri, counts), or a Failed state carrying the
    one-line message of a user-fixable error (the flow run is then Failed)."""
    for name in ("pipeline", "stages", "twostep"):  # stage progress lines (INFO) are shown
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        cfg = load_config(config, overrides, workspace)
        plan = plan_run(only)
        store = ArtifactStore(workspace_of(cfg))
        preflight(cfg, store, plan)
    except TwostepError as exc:
        get_run_logger().error("%s", exc)
        return Failed(message=str(exc))
    outputs: dict[str, Manifest] = {}
    summary: dict[str, dict[str, object]] = {}
    with ray_session(cfg.ray):
        for step in plan:
            state = stage_task(step, cfg, store, outputs, force, return_state=True)
            if not state.is_completed():
                return Failed(message=state.message or f"stage {step.name} failed")
            outcome = state.result()
            outputs[step.name] = outcome.manifest
            summary[step.name] = {"key": outcome.manifest.key, "cached": outcome.cached,
                                  "uri": outcome.uri, "counts": outcome.manifest.counts}
    return summary


@flow(name="distill", log_prints=True)
def distill(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    only: list[str] | None = None,
    force: bool = False,
) -> dict[str, dict[str, object]]:
    """Run the pipeline. ``config``: a preset name (``toy``, ``smoke``) or a YAML path;
    ``overrides``: ``key=value`` items; ``only``: stage names to (re)compute, their upstream
    stages must be cached; ``force``: recompute instead of using the cache."""
    return run_pipeline(config, overrides, workspace, only, force)


@flow(name="curate", log_prints=True)
def curate(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    force: bool = False,
) -> dict[str, dict[str, object]]:
    """Rerun prompt curation alone."""
    return run_pipeline(config, overrides, workspace, ["curate"], force)


@flow(name="sample_teacher", log_prints=True)
def sample_teacher(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    force: bool = False,
) -> dict[str, dict[str, object]]:
    """Rerun teacher sampling alone (curation must be cached)."""
    return run_pipeline(config, overrides, workspace, ["sample_teacher"], force)


@flow(name="train_init", log_prints=True)
def train_init(config: str = "toy", overrides: list[str] | None = None,
               workspace: str | None = None, force: bool = False):
    """Rerun phase-1 training alone (teacher samples must be cached)."""
    return run_pipeline(config, overrides, workspace, ["train_init"], force)


@flow(name="train_e2e", log_prints=True)
def train_e2e(config: str = "toy", overrides: list[str] | None = None,
              workspace: str | None = None, force: bool = False):
    """Rerun phase-2 training alone (phase 1 must be cached)."""
    return run_pipeline(config, overrides, workspace, ["train_e2e"], force)


@flow(name="evaluate", log_prints=True)
def evaluate(config: str = "toy", overrides: list[str] | None = None,
             workspace: str | None = None, force: bool = False):
    """Rerun the evaluation alone (both training phases must be cached)."""
    return run_pipeline(config, overrides, workspace, ["evaluate"], force)


@flow(name="distill-ablate", log_prints=True)
def ablate(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    variants: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Train and evaluate the full method and each ablation variant (from the same teacher
    shards: upstream stages are cached), then write ``<workspace>/ablation/ablation.md``."""
    from pipeline.ablation import VARIANTS, student_metrics, write_ablation

    results: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    for name in variants or list(VARIANTS):
        summary = run_pipeline(config, [*(overrides or []), *VARIANTS[name]], workspace,
                               None, False)
        if isinstance(summary, State):
            return summary
        evaluation = summary["evaluate"]
        store = ArtifactStore(workspace_of(load_config(config, overrides, workspace)))
        results[name] = student_metrics(store, f"evaluate/{evaluation['key']}")
        sources[name] = str(evaluation["uri"])
    print(write_ablation(store, results, sources))
    return results


STAGE_FLOWS = {"curate": curate, "sample_teacher": sample_teacher, "train_init": train_init,
               "train_e2e": train_e2e, "evaluate": evaluate}
"""Per-stage flows by stage name (deployments ``<stage>/<stage>``)."""
