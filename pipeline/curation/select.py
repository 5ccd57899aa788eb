"""The global part of curation, on the driver over compact columns of the row table
(:func:`pipeline.curation.rows.clean_and_sign_on_ray`): exact and near-duplicate removal, the
per-source cap, the train/eval split and the per-source statistics.

Every row ends with one status: ``""`` (kept) or the first rule that dropped it
(:data:`schemas.manifest.CURATION_RULES`); a duplicate also names the prompt it duplicates.
Earlier rows win (sources in config order, rows in file order), so the result is stable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.curation.minhash import near_duplicate_representatives
from pipeline.curation.rows import SHOWN_CHARS
from pipeline.curation.sources import ResolvedSource
from pipeline.curation.text import prompt_id, split_of
from schemas.config import CurateConfig
from schemas.manifest import CURATION_RULES, SourceStats


@dataclass
class Selection:
    """Per row of the table: ``status`` (object array of rule names, ``""`` kept) and
    ``duplicate_of`` (the kept prompt's id for a duplicate, else None)."""

    status: np.ndarray
    duplicate_of: list[str | None]

    @property
    def kept(self) -> np.ndarray:
        return np.nonzero(self.status == "")[0]


def _signature_matrix(column: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    flat = pa.concat_arrays([c.flatten() for c in column.chunks])
    return flat.to_numpy(zero_copy_only=False).reshape(-1, num_perm)


def mark_exact_duplicates(prompts: list[str], sel: Selection) -> None:
    """A kept row whose cleaned text equals an earlier kept row's is an exact duplicate."""
    first_seen: dict[str, int] = {}
    for i in sel.kept:
        j = first_seen.setdefault(prompts[i], int(i))
        if j != i:
            sel.status[i] = "exact_duplicate"
            sel.duplicate_of[i] = prompt_id(prompts[j])


def mark_near_duplicates(table: pa.Table, prompts: list[str], cfg: CurateConfig,
                         sel: Selection) -> None:
    """Among kept rows with shingles (``signed``), all but the earliest of each MinHash
    cluster are near duplicates (see :mod:`pipeline.curation.minhash`)."""
    signed = table.column("signed").to_numpy(zero_copy_only=False)
    alive = np.nonzero((sel.status == "") & signed)[0]
    sig = _signature_matrix(table.column("sig"), cfg.near_dedup.num_perm)[alive]
    rep = near_duplicate_representatives(sig, cfg.near_dedup.threshold)
    for k in np.nonzero(rep != np.arange(len(alive)))[0]:
        i, j = alive[k], alive[rep[k]]
        sel.status[i] = "near_duplicate"
        sel.duplicate_of[i] = prompt_id(prompts[j])


def cap_per_source(source_index: np.ndarray, sources: list[ResolvedSource], cap: int,
                   sel: Selection) -> None:
    """Keep at most ``cap`` rows per source name (the earliest); the rest: ``source_cap``."""
    per_name: Counter[str] = Counter()
    for i in sel.kept:
        name = sources[source_index[i]].name
        per_name[name] += 1
        if per_name[name] > cap:
            sel.status[i] = "source_cap"


def select_prompts(table: pa.Table, sources: list[ResolvedSource],
                   cfg: CurateConfig) -> Selection:
    """Run the global passes in order (exact, near duplicates, per-source cap) over the row
    table; the rows' per-row statuses are where they start."""
    prompts = table.column("prompt").to_pylist()
    sel = Selection(np.array(table.column("status").to_pylist(), dtype=object),
                    [None] * table.num_rows)
    mark_exact_duplicates(prompts, sel)
    if cfg.near_dedup.enabled:
        mark_near_duplicates(table, prompts, cfg, sel)
    if cfg.max_per_source is not None:
        cap_per_source(table.column("source_index").to_numpy(), sources, cfg.max_per_source,
                       sel)
    return sel


def split_rows(table: pa.Table, sources: list[ResolvedSource], sel: Selection,
               cfg: CurateConfig) -> dict[str, list[dict[str, object]]]:
    """The kept rows as prompt records, by split (``train``/``eval``, by a salted hash of the
    prompt id), in table order."""
    prompts = table.column("prompt").to_pylist()
    source_index = table.column("source_index").to_numpy()
    source_row = table.column("source_row").to_numpy()
    out: dict[str, list[dict[str, object]]] = {"train": [], "eval": []}
    for i in sel.kept:
        pid = prompt_id(prompts[i])
        out[split_of(pid, cfg.eval_fraction, cfg.split_seed)].append(
            {"prompt_id": pid, "prompt": prompts[i], "source": sources[source_index[i]].name,
             "source_row": int(source_row[i])})
    return out


def dropped_counts(sel: Selection) -> dict[str, int]:
    """Rows dropped by each rule (every rule listed, zeros included)."""
    return {rule: int((sel.status == rule).sum()) for rule in CURATION_RULES}


def source_stats(table: pa.Table, sources: list[ResolvedSource],
                 sel: Selection) -> list[SourceStats]:
    """What each source contributed and lost, rule by rule."""
    source_index = table.column("source_index").to_numpy()
    out = []
    for src in sources:
        mask = source_index == src.index
        out.append(SourceStats(
            name=src.name, uri=src.uri, rows_read=int(mask.sum()),
            kept=int((mask & (sel.status == "")).sum()),
            dropped={r: c for r in CURATION_RULES if (c := int((mask & (sel.status == r)).sum()))}))
    return out


def dropped_table(table: pa.Table, sources: list[ResolvedSource], sel: Selection) -> pa.Table:
    """Every dropped row: source, row, rule, text (first :data:`SHOWN_CHARS` characters) and
    the id of the prompt it duplicates."""
    idx = np.nonzero(sel.status != "")[0]
    take = pa.array(idx, pa.int64())
    prompts = table.column("prompt").take(take).to_pylist()
    source_index = table.column("source_index").to_numpy()
    return pa.table({
        "source": pa.array([sources[source_index[i]].name for i in idx], pa.string()),
        "source_row": table.column("source_row").take(take),
        "rule": pa.array([sel.status[i] for i in idx], pa.string()),
        "text": pa.array([p[:SHOWN_CHARS] if p else p for p in prompts], pa.string()),
        "duplicate_of": pa.array([sel.duplicate_of[i] for i in idx], pa.string()),
    })
