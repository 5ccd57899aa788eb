"""Prefect artifacts for stage results: a Markdown summary and a table of counts and metrics
for every computed stage, the evaluation report itself, and the MLflow run where there is
one. Runs inside a task; knows nothing of the stages' internals beyond their manifests."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pipeline.stage import StageOutcome
from pipeline.store import ArtifactStore

log = logging.getLogger(__name__)


def _key(stage: str, suffix: str) -> str:
    return f"{stage.replace('_', '-')}-{suffix}"


def progress_reporter(stage: str) -> Callable[[float], None]:
    """A Prefect progress artifact for the stage, updated at most every whole percent."""
    artifact_id = create_progress_artifact(0.0, key=_key(stage, "progress"),
                                           description=f"{stage}: progress")
    last = [0]
    reachable = [True]

    def report(fraction: float) -> None:
        percent = int(max(0.0, min(1.0, fraction)) * 100)
        if percent > last[0] and reachable[0]:
            last[0] = percent
            try:
                update_progress_artifact(artifact_id, float(percent))
            except Exception as exc:  # noqa: BLE001 - any API failure: the work goes on
                # A dashboard that went away (the Prefect server stopped) must not stop the
                # stage: it finishes and commits; the flow run's state is Prefect's matter.
                reachable[0] = False
                log.warning("%s: the Prefect API is unreachable, progress is no longer "
                            "reported (%s)", stage, str(exc).splitlines()[0] if str(exc)
                            else type(exc).__name__)

    return report


def publish(outcome: StageOutcome, store: ArtifactStore) -> None:
    m = outcome.manifest
    rows = [{"kind": "count", "name": k, "value": v} for k, v in m.counts.items()]
    rows += [{"kind": "metric", "name": k, "value": round(v, 6)} for k, v in m.metrics.items()]
    rows += [{"kind": "timing_s", "name": k, "value": v} for k, v in m.timings.items()]
    create_table_artifact(rows, key=_key(m.stage, "numbers"),
                          description=f"{m.stage} {m.key}: counts, metrics, timings")
    lines = [f"### {m.stage} `{m.key}` ({'cached' if outcome.cached else 'computed'})", "",
             f"- folder: `{outcome.uri}`", f"- code: `{m.code_version}`",
             f"- files: {len(m.files)} ({sum(f.size for f in m.files) / 1e6:.1f} MB)"]
    run_id, uri = getattr(m, "mlflow_run_id", None), getattr(m, "mlflow_uri", None)
    if run_id:
        lines.append(f"- MLflow run `{run_id}` in `{uri}` (`distill dashboard` to browse)")
    create_markdown_artifact("\n".join(lines) + "\n", key=_key(m.stage, "summary"),
                             description=f"{m.stage} summary")
    if m.stage == "evaluate" and store.exists(outcome.stage_dir, "report.md"):
        from pipeline.evaluation.report import inline_images

        report = store.read_bytes(outcome.stage_dir, "report.md").decode()
        images = {name: store.read_bytes(outcome.stage_dir, name)
                  for name in ("grid.png", "losses.png")
                  if store.exists(outcome.stage_dir, name)}
        create_markdown_artifact(inline_images(report, images), key="evaluate-report",
                                 description=f"evaluation report ({outcome.uri}, with "
                                             f"report.html beside it)")
