from __future__ import annotations

import numpy as np

from pipeline.curation.minhash import lsh_params, near_duplicate_representatives, signatures
from pipeline.curation.text import match_text


def _reps(texts: list[str], threshold: float = 0.85) -> list[int]:
    sig = signatures([match_text(t) for t in texts], 128, 1, "char", 5)
    return near_duplicate_representatives(sig, threshold).tolist()


def test_near_duplicates_keep_the_earliest():
    texts = [
        "a small red circle in the top left corner on a white background",
        "a large blue square at the bottom",
        "A small red circle in the top left corner on a white background.",
        "a small red circle in the top left corner on a white background!!",
        "a large blue square at the bottom on a gray background",
    ]
    assert _reps(texts) == [0, 1, 0, 0, 4]


def test_distinct_toy_prompts_are_not_merged():
    texts = [
        "a small red circle in the top left corner on a white background",
        "a small red circle in the top left corner on a black background",
        "a small red circle in the top right corner on a white background",
        "a red circle", "a red square", "a blue circle",
    ]
    assert _reps(texts) == list(range(len(texts)))


def test_estimated_jaccard_tracks_true_jaccard():
    rng = np.random.default_rng(0)
    base = list(rng.integers(0, 10_000, 200).astype(str))
    a = " ".join(base)
    b = " ".join(base[:180] + list(rng.integers(10_000, 20_000, 20).astype(str)))
    sig = signatures([a, b], 256, 1, "word", 1)
    true = len(set(a.split()) & set(b.split())) / len(set(a.split()) | set(b.split()))
    assert abs((sig[0] == sig[1]).mean() - true) < 0.08


def test_transitive_clusters_and_lsh_params():
    texts = ["one two three four five six seven eight"] * 3 + ["nine ten"]
    assert _reps(texts) == [0, 0, 0, 3]
    bands, rows = lsh_params(0.85, 128)
    assert bands * rows <= 128 and rows > 1
