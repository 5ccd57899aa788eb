"""Reading a curated prompt set (the ``curate`` stage's Parquet shards)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import ArtifactStore
from schemas.manifest import PromptSetManifest

PROMPT_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("source", pa.string()),
        ("source_row", pa.int64()),
    ]
)
"""Columns of every prompt shard."""


def read_prompts(store: ArtifactStore, manifest: PromptSetManifest, split: str) -> pa.Table:
    """All prompts of one split (``"train"`` or ``"eval"``), in shard order."""
    if split not in manifest.splits:
        raise KeyError(f"no split {split!r} (splits: {', '.join(manifest.splits)})")
    stage_dir = f"{manifest.stage}/{manifest.key}"
    tables = []
    for shard in manifest.splits[split].shards:
        with store.fs.open(store.path(stage_dir, shard.path), "rb") as handle:
            tables.append(pq.read_table(handle))
    return pa.concat_tables(tables) if tables else PROMPT_SCHEMA.empty_table()
