"""Stage ``curate``: prompt sources -> cleaned, filtered, de-duplicated, split Parquet shards.

Row-parallel work (reading, cleaning, filtering, MinHash signatures) runs on Ray Data; the
global steps (exact and near-duplicate removal, per-source cap, split) run on the driver over
compact columns, in the sources' order, so the output does not depend on Ray's scheduling.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from pipeline.curation.minhash import near_duplicate_representatives, signatures
from pipeline.curation.promptset import PROMPT_SCHEMA
from pipeline.curation.sources import (
    ROW_SCHEMA,
    ResolvedSource,
    check_source_header,
    fingerprint_sources,
    read_source,
    resolve_sources,
)
from pipeline.curation.text import clean_text, match_text, prompt_id, split_of, word_count
from pipeline.errors import SourceError
from pipeline.ray_runtime import ray_session
from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import CurateConfig, DistillConfig
from schemas.manifest import (
    CURATION_RULES,
    PromptSetManifest,
    PromptShard,
    PromptSplit,
    SourceStats,
)

DROPPED_FILENAME = "dropped.parquet"
_SHOWN_CHARS = 300


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


def _clean_filter_sign(batch: pa.Table, cfg: CurateConfig) -> pa.Table:
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
        prompts.append(clean if not rule else clean[:_SHOWN_CHARS])
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


def _row_stage_on_ray(sources: list[ResolvedSource], cfg: CurateConfig) -> pa.Table:
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
    ds = ds.map_batches(_clean_filter_sign, fn_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                        batch_format="pyarrow")
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:  # every source is empty
        return _clean_filter_sign(ROW_SCHEMA.empty_table(), cfg)
    table = pa.concat_tables(tables)
    fatal = table.filter(pa.compute.equal(table.column("status"), _FATAL))
    if fatal.num_rows:
        raise SourceError(fatal.column("prompt")[0].as_py())
    return table.sort_by([("source_index", "ascending"), ("source_row", "ascending")])


def _signature_matrix(column: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    flat = pa.concat_arrays([c.flatten() for c in column.chunks])
    return flat.to_numpy(zero_copy_only=False).reshape(-1, num_perm)


def curate(ctx: StageContext) -> StageResult:
    cfg: CurateConfig = ctx.section  # type: ignore[assignment]
    store = ctx.store
    for entry in store.fs.ls(store.path(ctx.out_dir), detail=False):
        store.fs.rm(entry, recursive=True)  # leftovers of a killed attempt: recompute whole
    timings: dict[str, float] = {}
    sources = resolve_sources(cfg.sources)
    ctx.log.info("curate: %d source(s): %s", len(sources), ", ".join(s.uri for s in sources))

    start = time.perf_counter()
    with ray_session(ctx.config.ray):
        table = _row_stage_on_ray(sources, cfg)
    timings["read_clean_sign_s"] = round(time.perf_counter() - start, 3)
    n = table.num_rows
    ctx.log.info("curate: %d rows read and cleaned in %.1fs", n, timings["read_clean_sign_s"])

    start = time.perf_counter()
    status = np.array(table.column("status").to_pylist(), dtype=object)
    prompts = table.column("prompt").to_pylist()
    source_index = table.column("source_index").to_numpy()
    duplicate_of: list[str | None] = [None] * n

    first_seen: dict[str, int] = {}
    for i in np.nonzero(status == "")[0]:
        j = first_seen.setdefault(prompts[i], int(i))
        if j != i:
            status[i] = "exact_duplicate"
            duplicate_of[i] = prompt_id(prompts[j])

    if cfg.near_dedup.enabled:
        signed = table.column("signed").to_numpy(zero_copy_only=False)
        alive = np.nonzero((status == "") & signed)[0]
        sig = _signature_matrix(table.column("sig"), cfg.near_dedup.num_perm)[alive]
        rep = near_duplicate_representatives(sig, cfg.near_dedup.threshold)
        for k in np.nonzero(rep != np.arange(len(alive)))[0]:
            i, j = alive[k], alive[rep[k]]
            status[i] = "near_duplicate"
            duplicate_of[i] = prompt_id(prompts[j])
    timings["dedupe_s"] = round(time.perf_counter() - start, 3)

    if cfg.max_per_source is not None:
        per_name: Counter[str] = Counter()
        for i in np.nonzero(status == "")[0]:
            name = sources[source_index[i]].name
            per_name[name] += 1
            if per_name[name] > cfg.max_per_source:
                status[i] = "source_cap"

    start = time.perf_counter()
    kept = np.nonzero(status == "")[0]
    rows_by_split: dict[str, list[dict[str, object]]] = {"train": [], "eval": []}
    source_row = table.column("source_row").to_numpy()
    for i in kept:
        pid = prompt_id(prompts[i])
        rows_by_split[split_of(pid, cfg.eval_fraction, cfg.split_seed)].append(
            {"prompt_id": pid, "prompt": prompts[i], "source": sources[source_index[i]].name,
             "source_row": int(source_row[i])}
        )
    splits = {
        name: _write_split(ctx, name, rows, cfg.rows_per_shard)
        for name, rows in rows_by_split.items()
    }
    dropped_idx = np.nonzero(status != "")[0]
    _write_dropped(ctx, table, sources, status, duplicate_of, dropped_idx)
    timings["write_s"] = round(time.perf_counter() - start, 3)

    dropped = {rule: int((status == rule).sum()) for rule in CURATION_RULES}
    source_stats = []
    for src in sources:
        mask = source_index == src.index
        source_stats.append(
            SourceStats(
                name=src.name,
                uri=src.uri,
                rows_read=int(mask.sum()),
                kept=int((mask & (status == "")).sum()),
                dropped={r: c for r in CURATION_RULES if (c := int((mask & (status == r)).sum()))},
            )
        )
    counts = {
        "rows_read": n,
        "kept": len(kept),
        "dropped": n - len(kept),
        "train": splits["train"].num_prompts,
        "eval": splits["eval"].num_prompts,
    }
    ctx.log.info("curate: kept %d of %d rows (train %d, eval %d); dropped %s", len(kept), n,
                 counts["train"], counts["eval"], {k: v for k, v in dropped.items() if v})
    metrics = {"prompts_per_s": n / max(sum(timings.values()), 1e-9)}
    return StageResult(
        counts=counts,
        metrics=metrics,
        timings=timings,
        fields={"splits": splits, "dropped": dropped, "sources": source_stats},
    )


def _write_split(
    ctx: StageContext, split: str, rows: list[dict[str, object]], rows_per_shard: int
) -> PromptSplit:
    shards = []
    for shard_index, start in enumerate(range(0, max(len(rows), 1), rows_per_shard)):
        chunk = rows[start : start + rows_per_shard]
        table = pa.Table.from_pylist(chunk, schema=PROMPT_SCHEMA)
        rel = f"{split}-{shard_index:05d}.parquet"
        with ctx.store.open_atomic(ctx.out_dir, rel) as handle:
            pq.write_table(table, handle, compression="zstd")
        shards.append(PromptShard(path=rel, num_rows=len(chunk)))
    return PromptSplit(num_prompts=len(rows), shards=shards)


def _write_dropped(
    ctx: StageContext,
    table: pa.Table,
    sources: list[ResolvedSource],
    status: np.ndarray,
    duplicate_of: list[str | None],
    idx: np.ndarray,
) -> None:
    prompts = table.column("prompt").take(pa.array(idx, pa.int64())).to_pylist()
    source_index = table.column("source_index").to_numpy()
    dropped = pa.table(
        {
            "source": pa.array([sources[source_index[i]].name for i in idx], pa.string()),
            "source_row": table.column("source_row").take(pa.array(idx, pa.int64())),
            "rule": pa.array([status[i] for i in idx], pa.string()),
            "text": pa.array([p[:_SHOWN_CHARS] if p else p for p in prompts], pa.string()),
            "duplicate_of": pa.array([duplicate_of[i] for i in idx], pa.string()),
        }
    )
    with ctx.store.open_atomic(ctx.out_dir, DROPPED_FILENAME) as handle:
        pq.write_table(dropped, handle, compression="zstd")


def check(cfg: DistillConfig) -> None:
    """Fail before any work if a source is missing, its format cannot be inferred, or a
    CSV/Parquet source lacks the configured column."""
    for src in resolve_sources(cfg.curate.sources):
        check_source_header(src)


STAGE: StageSpec[PromptSetManifest] = StageSpec(
    name="curate",
    upstream=(),
    manifest_type=PromptSetManifest,
    section=lambda cfg: cfg.curate,
    run=curate,
    check=check,
    version=1,
    fingerprint=lambda cfg: fingerprint_sources(resolve_sources(cfg.curate.sources)),
)
