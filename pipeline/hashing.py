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


def file_identity(path: Path) -> str:
    """A file's identity for a cache key: its content sha256 under 64 MiB, else ``size:mtime``
    (hashing a large weight file would cost seconds on every cache check)."""
    stat = path.stat()
    if stat.st_size < _HASH_CONTENT_BELOW:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return f"{stat.st_size}:{int(stat.st_mtime)}"


# what a diffusers/transformers model folder is read from: configs, weights, vocabularies, and
# the tokenizer's chat template (Z-Image's prompt encoding applies it)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")


def files_fingerprint(folder: Path, parts: tuple[str, ...],
                      suffixes: tuple[str, ...] = MODEL_FILE_SUFFIXES) -> dict[str, str]:
    """Files under ``folder / part`` (a file or a folder, recursively) with one of
    ``suffixes`` -> :func:`file_identity`, by path relative to ``folder``."""
    out: dict[str, str] = {}
    for part in parts:
        base = folder / part
        for f in sorted(base.rglob("*") if base.is_dir() else [base]):
            if f.is_file() and f.suffix in suffixes:
                out[str(f.relative_to(folder))] = file_identity(f)
    return out
