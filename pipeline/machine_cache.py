"""Answers measured once per machine (the bf16 probe, the sampling split), kept in
``$XDG_CACHE_HOME/twostep/<name>.json`` as ``{key: record}``. A record is only a speed choice:
a missing, unreadable or read-only cache means measuring again, never a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def cache_path(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "twostep" / f"{name}.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def recall(name: str, key: str, path: Path | None = None) -> dict[str, Any] | None:
    """The record kept under ``key`` (None when there is none)."""
    record = _read(path or cache_path(name)).get(key)
    return record if isinstance(record, dict) else None


def remember(name: str, key: str, record: dict[str, Any], path: Path | None = None) -> None:
    """Keep ``record`` under ``key`` (written whole through a temporary file: a concurrent
    reader never sees half a file)."""
    path = path or cache_path(name)
    known = _read(path)
    known[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: measure again next time
