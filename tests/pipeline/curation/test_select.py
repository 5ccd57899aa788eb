"""The global curation passes on a hand-made row table (no Ray): every row gets exactly one
status, earlier rows win, and the counts and statistics agree."""

from __future__ import annotations

import pyarrow as pa

from pipeline.curation.minhash import signatures
from pipeline.curation.select import (
    dropped_counts,
    dropped_table,
    select_prompts,
    source_stats,
    split_rows,
)
from pipeline.curation.sources import ResolvedSource
from pipeline.curation.text import match_text, prompt_id
from schemas.config import CurateConfig, MinHashConfig

SOURCES = [ResolvedSource(0, "a", "a.txt", "txt", "prompt", "a.txt"),
           ResolvedSource(1, "b", "b.txt", "txt", "prompt", "b.txt")]


def _table(rows: list[tuple[int, str, str]], num_perm: int = 32) -> pa.Table:
    texts = [match_text(t) if not status else "" for _, t, status in rows]
    sig = signatures(texts, num_perm, 1, "char", 5)
    return pa.table({
        "source_index": pa.array([s for s, _, _ in rows], pa.int32()),
        "source_row": pa.array(range(len(rows)), pa.int64()),
        "prompt": pa.array([t for _, t, _ in rows], pa.string()),
        "status": pa.array([status for _, _, status in rows], pa.string()),
        "sig": pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel(), pa.uint32()), num_perm),
        "signed": pa.array([bool(t) for t in texts], pa.bool_()),
    })


def test_each_row_gets_one_status_and_earlier_rows_win():
    table = _table([
        (0, "a red circle on the left", ""),
        (0, "a red circle on the left", ""),          # exact duplicate of row 0
        (1, "A red circle on the left!", ""),         # near duplicate of row 0
        (0, "", "empty"),                              # dropped by a per-row rule already
        (1, "a blue square at the top right", ""),
        (1, "a green triangle in the middle", ""),    # over source b's cap of 1
    ])
    cfg = CurateConfig(sources=[{"path": "a.txt"}], max_per_source=1, eval_fraction=0.0,
                       near_dedup=MinHashConfig(num_perm=32, threshold=0.7))
    sel = select_prompts(table, SOURCES, cfg)
    assert list(sel.status) == ["", "exact_duplicate", "near_duplicate", "empty", "",
                                "source_cap"]
    first = prompt_id("a red circle on the left")
    assert sel.duplicate_of[1] == sel.duplicate_of[2] == first
    counts = dropped_counts(sel)
    assert counts["exact_duplicate"] == counts["near_duplicate"] == counts["source_cap"] == 1
    assert sum(counts.values()) == 4
    rows = split_rows(table, SOURCES, sel, cfg)
    assert [r["prompt"] for r in rows["train"]] == ["a red circle on the left",
                                                    "a blue square at the top right"]
    assert rows["eval"] == []
    stats = {s.name: s for s in source_stats(table, SOURCES, sel)}
    assert (stats["a"].rows_read, stats["a"].kept) == (3, 1)
    assert stats["b"].dropped == {"near_duplicate": 1, "source_cap": 1}
    dropped = dropped_table(table, SOURCES, sel)
    assert dropped.column("rule").to_pylist() == ["exact_duplicate", "near_duplicate", "empty",
                                                  "source_cap"]
    assert dropped.column("duplicate_of").to_pylist()[:2] == [first, first]


def test_near_dedup_off_keeps_near_duplicates():
    table = _table([(0, "a red circle on the left", ""), (0, "A red circle on the left!", "")])
    cfg = CurateConfig(sources=[{"path": "a.txt"}], near_dedup=MinHashConfig(enabled=False))
    assert list(select_prompts(table, SOURCES, cfg).status) == ["", ""]
