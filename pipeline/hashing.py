"""Canonical hashing of configs and files (cache keys, manifest checksums)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data, equal text, equal hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stage_key(stage: str, version: int, section: Any, input_hashes: dict[str, str]) -> str:
    """Cache key of a stage run: 16 hex digits of sha256 over the stage name, its code version,
    its config section (canonical JSON) and the content hashes of its inputs, by input name."""
    payload = canonical_json(
        {"stage": stage, "version": version, "config": section, "inputs": input_hashes}
    )
    return sha256_text(payload)[:16]
