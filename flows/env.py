"""Process-level defaults for Prefect and Ray, applied before either is imported."""

from __future__ import annotations

import os

DEFAULTS = {
    # No calls home from an offline cluster or laptop.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Library logs (pipeline.*, stages.*, twostep.*) appear in the Prefect run logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline,stages,twostep",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep Ray from silently taking over the driver's stdout/stderr with dedup messages.
    "RAY_DEDUP_LOGS": "0",
}


def apply_defaults() -> None:
    """Set each default unless the user set the variable already."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
