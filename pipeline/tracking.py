"""Experiment tracking (MLflow): where a workspace keeps its store, and the run tracker the
training workers log through.

By default each workspace has its own SQLite store ``<workspace>/mlflow.db`` with artifacts in
``<workspace>/mlartifacts`` (MLflow 3 no longer accepts a plain file store); any
``tracking.mlflow_uri`` replaces both.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.store import ArtifactStore
from schemas.config import TrackingConfig

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def mlflow_uri(tracking: TrackingConfig, store: ArtifactStore) -> str:
    """The configured tracking URI, else the SQLite store inside the (local) workspace."""
    if tracking.mlflow_uri:
        return tracking.mlflow_uri
    root = store.local_path()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / MLFLOW_DB}"


def check_tracking_server(tracking: TrackingConfig) -> None:
    """An ``http(s)://`` ``tracking.mlflow_uri`` accepts connections (from this machine: a
    server that only the driver reaches still fails on the workers of other nodes)."""
    from urllib.parse import urlsplit

    from pipeline.net import check_reachable

    uri = tracking.mlflow_uri
    if not uri or not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    check_reachable("tracking.mlflow_uri", uri, parts.hostname or "",
                    parts.port or (443 if parts.scheme == "https" else 80))


def mlflow_artifact_root(tracking: TrackingConfig, store: ArtifactStore) -> str | None:
    """Where a new experiment keeps its artifacts: inside the workspace for the default local
    store (MLflow would otherwise use ./mlruns of the current directory)."""
    if tracking.mlflow_uri:
        return None
    return (store.local_path() / MLFLOW_ARTIFACTS).as_uri()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunTracker:
    """One MLflow run, or nothing when inactive (ranks other than 0, or no URI): params once
    at creation, metrics buffered and sent in batches, images. ``run_id`` continues an
    existing run (a resumed training)."""

    def __init__(self, uri: str | None, experiment: str, *, run_name: str,
                 tags: dict[str, str], params: dict[str, Any], run_id: str | None = None,
                 artifact_location: str | None = None, active: bool = True) -> None:
        self.active = active and uri is not None
        self.pending: list[tuple[str, float, int]] = []
        self.run_id = run_id
        if not self.active:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=artifact_location)
            self.run_id = self.client.create_run(exp_id, run_name=run_name,
                                                 tags=tags).info.run_id
            batch = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
            for i in range(0, len(batch), 100):
                self.client.log_batch(self.run_id, params=batch[i:i + 100])

    def metric(self, step: int, values: dict[str, float]) -> None:
        if self.active:
            self.pending += [(k, v, step) for k, v in values.items()]

    def flush(self) -> None:
        if self.active and self.pending:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, s) for k, v, s in self.pending]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
            self.pending = []

    def image(self, image, name: str) -> None:
        if self.active:
            self.client.log_image(self.run_id, image, name)

    def finish(self, status: str) -> None:
        if self.active:
            self.flush()
            self.client.set_terminated(self.run_id, status=status)


def metric_series(uri: str, run_id: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every metric's history of a run: name -> (steps, values), by step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = {}
    for key in client.get_run(run_id).data.metrics:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        out[key] = ([m.step for m in history], [m.value for m in history])
    return out
