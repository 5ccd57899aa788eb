"""Writing and reading a curated prompt set (the ``curate`` stage's Parquet shards)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import ArtifactStore
from schemas.manifest import PromptSetManifest, PromptShard, PromptSplit

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


def write_split(store: ArtifactStore, out_dir: str, split: str, rows: list[dict[str, object]],
                rows_per_shard: int) -> PromptSplit:
    """``rows`` (:data:`PROMPT_SCHEMA` records) as ``<split>-NNNNN.parquet`` shards of
    ``rows_per_shard`` (zstd), each written atomically; an empty split is one empty shard."""
    shards = []
    for shard_index, start in enumerate(range(0, max(len(rows), 1), rows_per_shard)):
        chunk = rows[start : start + rows_per_shard]
        table = pa.Table.from_pylist(chunk, schema=PROMPT_SCHEMA)
        rel = f"{split}-{shard_index:05d}.parquet"
        with store.open_atomic(out_dir, rel) as handle:
            pq.write_table(table, handle, compression="zstd")
        shards.append(PromptShard(path=rel, num_rows=len(chunk)))
    return PromptSplit(num_prompts=len(rows), shards=shards)
