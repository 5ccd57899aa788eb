"""Canonical hashing of configs and files (cache keys, manifest checksums)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import IO, Any

_HASH_CONTENT_BELOW = 64 << 20  # weight files larger than this are identified by size + mtime


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data, equal text, equal hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stream_sha256(handle: IO[bytes]) -> str:
    """sha256 of what is left to read in ``handle``, in 1 MiB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a local file, streamed."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stage_key(stage: str, version: int, section: Any, input_hashes: dict[str, str]) -> str:
    """Cache key of a stage run: 16 hex digits of sha256 over the stage name, its code version,
    its config section (canonical JSON) and the content hashes of its inputs, by input name."""
    payload = canonical_json(
        {"stage": stage, "version": version, "config": section, "inputs": input_hashes}
    )
    return sha256_text(payload)[:16]


def files_fingerprint(folder: Path, parts: tuple[str, ...],
                      suffixes: tuple[str, ...] = (".json", ".safetensors", ".txt", ".model"),
                      ) -> dict[str, str]:
    """Files under ``folder / part`` (a file or a folder, recursively) with one of
    ``suffixes`` -> content sha256 (files under 64 MiB) or ``size:mtime`` (larger ones, whose
    hashing would cost seconds on every cache check)."""
    out: dict[str, str] = {}
    for part in parts:
        base = folder / part
        for f in sorted(base.rglob("*") if base.is_dir() else [base]):
            if not f.is_file() or f.suffix not in suffixes:
                continue
            stat = f.stat()
            if stat.st_size < _HASH_CONTENT_BELOW:
                value = hashlib.sha256(f.read_bytes()).hexdigest()
            else:
                value = f"{stat.st_size}:{int(stat.st_mtime)}"
            out[str(f.relative_to(folder))] = value
    return out
