"""The row-parallel part of curation, on Ray Data: read every source, clean each row's text,
apply the per-row rules and MinHash the survivors. The result is one table in the sources'
order, so nothing downstream depends on Ray's scheduling.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from pipeline.curation.minhash import signatures
from pipeline.curation.sources import ROW_SCHEMA, ResolvedSource, read_source
from pipeline.curation.text import clean_text, match_text, word_count
from pipeline.errors import SourceError
from schemas.config import CurateConfig

SHOWN_CHARS = 300
"""A dropped row's text is kept up to this many characters (in ``dropped.parquet``)."""

_FATAL = "__fatal__"


def _read_batch(batch: pa.Table, sources: list[ResolvedSource]) -> pa.Table:
    """Ray Data map: a batch of source indices -> all rows of those sources.

    A whole-file problem (:class:`SourceError`) comes back as one row with status
    ``__fatal__`` and the message as text: Ray Data would otherwise wrap the exception and
    lose its type, and the user would get a remote traceback instead of one clear line."""
    tables = []
    for i in batch.column("source_index").to_pylist():
        try:
            tables.append(read_source(sources[i]))
        except SourceError as exc:
            tables.append(pa.table({"source_index": pa.array([i], pa.int32()),
                                    "source_row": pa.array([-1], pa.int64()),
                                    "text": [str(exc)], "status": [_FATAL]}))
    return pa.concat_tables(tables)


def clean_filter_sign(batch: pa.Table, cfg: CurateConfig) -> pa.Table:
    """Ray Data map: clean text, apply the per-row rules, MinHash the survivors."""
    blocklist = [re.compile(p, re.IGNORECASE) for p in cfg.blocklist]
    statuses = batch.column("status").to_pylist()
    texts = batch.column("text").to_pylist()
    prompts: list[str | None] = []
    to_sign: list[str] = []
    for i, (text, status) in enumerate(zip(texts, statuses, strict=True)):
        if status == _FATAL:
            prompts.append(text)
            to_sign.append("")
            continue
        if status:
            prompts.append(None)
            to_sign.append("")
            continue
        clean = clean_text(text or "")
        rule = _row_rule(clean, cfg, blocklist)
        statuses[i] = rule
        prompts.append(clean if not rule else clean[:SHOWN_CHARS])
        to_sign.append(match_text(clean) if not rule and cfg.near_dedup.enabled else "")
    mh = cfg.near_dedup
    sig = signatures(to_sign, mh.num_perm, mh.seed, mh.shingle, mh.shingle_size)
    sig_col = pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), mh.num_perm)
    return pa.table(
        {
            "source_index": batch.column("source_index"),
            "source_row": batch.column("source_row"),
            "prompt": pa.array(prompts, pa.string()),
            "status": pa.array(statuses, pa.string()),
            "sig": sig_col,
            # Rows without a match text (only punctuation or symbols) have no shingles: they
            # take part in exact de-duplication only.
            "signed": pa.array([bool(t) for t in to_sign], pa.bool_()),
        }
    )


def _row_rule(clean: str, cfg: CurateConfig, blocklist: list[re.Pattern[str]]) -> str:
    """The first per-row rule ``clean`` fails, or ``""``."""
    if not clean:
        return "empty"
    if len(clean) < cfg.min_chars:
        return "too_short_chars"
    if len(clean) > cfg.max_chars:
        return "too_long_chars"
    words = word_count(clean)
    if words < cfg.min_words:
        return "too_few_words"
    if words > cfg.max_words:
        return "too_many_words"
    if any(p.search(clean) for p in blocklist):
        return "blocklist"
    return ""


def clean_and_sign_on_ray(sources: list[ResolvedSource], cfg: CurateConfig) -> pa.Table:
    """Every row of ``sources`` (columns ``source_index``, ``source_row``, ``prompt``,
    ``status`` (the per-row rule that dropped it, or ``""``), ``sig``, ``signed``), sorted by
    source and row. A whole-file problem raises :class:`SourceError` with its message."""
    import ray

    ds = ray.data.from_items(
        [{"source_index": s.index} for s in sources], override_num_blocks=len(sources)
    )
    ds = ds.map_batches(_read_batch, fn_kwargs={"sources": sources}, batch_size=1,
                        batch_format="pyarrow")
    # Without this, Ray fuses reading with cleaning and bundles all sources into one task
    # (the fused operator bundles inputs up to the larger batch size): no parallelism. Here
    # each source is read by its own task and the rows are re-cut into batch-sized blocks,
    # so cleaning and MinHash spread over every CPU even for a single large file.
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size)
    ds = ds.map_batches(clean_filter_sign, fn_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                        batch_format="pyarrow")
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:  # every source is empty
        return clean_filter_sign(ROW_SCHEMA.empty_table(), cfg)
    table = pa.concat_tables(tables)
    fatal = table.filter(pa.compute.equal(table.column("status"), _FATAL))
    if fatal.num_rows:
        raise SourceError(fatal.column("prompt")[0].as_py())
    return table.sort_by([("source_index", "ascending"), ("source_row", "ascending")])
