"""Stage ``curate``: prompt sources -> cleaned, filtered, de-duplicated, split Parquet shards.

Row-parallel work (reading, cleaning, filtering, MinHash signatures) runs on Ray Data
(:mod:`pipeline.curation.rows`); the global steps (exact and near-duplicate removal, per-source
cap, split) run on the driver over compact columns, in the sources' order
(:mod:`pipeline.curation.select`), so the output does not depend on Ray's scheduling.
"""

from __future__ import annotations

import time

import pyarrow.parquet as pq

from pipeline.curation.promptset import write_split
from pipeline.curation.rows import clean_and_sign_on_ray
from pipeline.curation.select import (
    dropped_counts,
    dropped_table,
    select_prompts,
    source_stats,
    split_rows,
)
from pipeline.curation.sources import check_source, fingerprint_sources, resolve_sources
from pipeline.errors import SourceError
from pipeline.ray_runtime import ray_session
from pipeline.stage import StageContext, StageResult, StageSpec
from schemas.config import CurateConfig, DistillConfig
from schemas.manifest import PromptSetManifest

DROPPED_FILENAME = "dropped.parquet"


def curate(ctx: StageContext) -> StageResult:
    cfg: CurateConfig = ctx.section  # type: ignore[assignment]
    store = ctx.store
    for entry in store.fs.ls(store.path(ctx.out_dir), detail=False):
        store.fs.rm(entry, recursive=True)  # leftovers of a killed attempt: recompute whole
    sources = resolve_sources(cfg.sources)
    ctx.log.info("curate: %d source(s): %s", len(sources), ", ".join(s.uri for s in sources))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with ray_session(ctx.config.ray):
        table = clean_and_sign_on_ray(sources, cfg)
    timings["read_clean_sign_s"] = round(time.perf_counter() - start, 3)
    n = table.num_rows
    ctx.log.info("curate: %d rows read and cleaned in %.1fs", n, timings["read_clean_sign_s"])

    start = time.perf_counter()
    sel = select_prompts(table, sources, cfg)
    timings["dedupe_s"] = round(time.perf_counter() - start, 3)

    dropped, kept = dropped_counts(sel), len(sel.kept)
    rows_by_split = split_rows(table, sources, sel, cfg)
    check_splits({name: len(rows) for name, rows in rows_by_split.items()}, n, dropped, cfg)
    start = time.perf_counter()
    splits = {name: write_split(store, ctx.out_dir, name, rows, cfg.rows_per_shard)
              for name, rows in rows_by_split.items()}
    with store.open_atomic(ctx.out_dir, DROPPED_FILENAME) as handle:
        pq.write_table(dropped_table(table, sources, sel), handle, compression="zstd")
    timings["write_s"] = round(time.perf_counter() - start, 3)

    counts = {"rows_read": n, "kept": kept, "dropped": n - kept,
              "train": splits["train"].num_prompts, "eval": splits["eval"].num_prompts}
    ctx.log.info("curate: kept %d of %d rows (train %d, eval %d); dropped %s", kept, n,
                 counts["train"], counts["eval"], {k: v for k, v in dropped.items() if v})
    return StageResult(
        counts=counts,
        metrics={"prompts_per_s": n / max(sum(timings.values()), 1e-9)},
        timings=timings,
        fields={"splits": splits, "dropped": dropped,
                "sources": source_stats(table, sources, sel)},
    )


def check_splits(sizes: dict[str, int], rows_read: int, dropped: dict[str, int],
                 cfg: CurateConfig) -> None:
    """Refuse a prompt set without a train prompt, which no later stage can use, before
    anything is written. (An empty eval split is refused by ``evaluate``'s input check as soon
    as curation ends, when the run evaluates.)"""
    kept = sum(sizes.values())
    if sizes["train"] > 0:
        return
    if kept:
        raise SourceError(f"no train prompt: all {kept} kept prompts were drawn for eval at "
                          f"curate.eval_fraction={cfg.eval_fraction:g}; lower eval_fraction or "
                          f"add prompts")
    why = ", ".join(f"{rule} {count}" for rule, count in dropped.items() if count) or "none"
    raise SourceError(f"no train prompt: 0 of {rows_read} rows kept (dropped: {why}); check "
                      f"curate.sources (path, format, field) and the rules (min_words, "
                      f"max_words, ...) in docs/curation.md")


def check(cfg: DistillConfig) -> None:
    """Fail before any work if a source is missing, its format cannot be inferred, a text
    source is empty, binary, not UTF-8 or one huge line, or a CSV/Parquet source lacks the
    configured column (:func:`~pipeline.curation.sources.check_source`)."""
    for src in resolve_sources(cfg.curate.sources):
        check_source(src)


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
