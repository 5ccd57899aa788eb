"""Near-duplicate detection: MinHash signatures (datasketch) + LSH banding + union-find.

Signatures are computed in parallel (one call per batch, on Ray Data); clustering runs on the
driver over the ``(N, num_perm)`` uint32 signature matrix, vectorized with numpy:

1. split each signature into ``bands`` bands of ``rows`` values; rows whose band hashes are
   equal in any band are candidates (probability ``1 - (1 - J**rows)**bands`` for Jaccard J);
2. each candidate pair is checked on the full signature: estimated Jaccard = fraction of equal
   values; pairs at or above ``threshold`` are joined (union-find);
3. in each cluster the earliest row (lowest order index) is kept, the others are duplicates.

Memory: 4 bytes x num_perm per prompt (512 MB for 1M prompts at 128 permutations).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.curation.text import shingles

_SCHEME = "affine32"


def signatures(
    texts: list[str], num_perm: int, seed: int, unit: str, size: int
) -> np.ndarray:
    """``(len(texts), num_perm)`` uint32 MinHash signatures. Empty texts get all-max rows,
    which never match anything real (an empty text is filtered before dedupe anyway)."""
    out = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    present = [i for i, t in enumerate(texts) if t]
    if not present:
        return out
    # imported here: datasketch pulls in scipy (~1 s), which a CLI command that stops at
    # pre-flight never needs
    from datasketch import MinHash

    sets = [shingles(texts[i], unit, size) for i in present]
    hashes = MinHash.bulk(sets, num_perm=num_perm, seed=seed, scheme=_SCHEME)
    out[present] = np.stack([np.asarray(m.hashvalues, dtype=np.uint32) for m in hashes])
    return out


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimizing false positives + false negatives
    around ``threshold`` (the same criterion as datasketch's MinHashLSH, integrated coarsely)."""
    best, best_err = (1, num_perm), math.inf
    grid = np.linspace(0.0, 1.0, 201)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows < 1:
            break
        prob = 1.0 - (1.0 - grid**rows) ** bands
        false_pos = prob[grid < threshold].sum()
        false_neg = (1.0 - prob[grid >= threshold]).sum()
        err = 0.5 * false_pos + 0.5 * false_neg
        if err < best_err:
            best, best_err = (bands, rows), err
    return best


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller index (earlier row) becomes the root: it is the one kept.
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


def _band_hashes(band: np.ndarray) -> np.ndarray:
    """Hash each row of a ``(N, rows)`` uint32 band to uint64 (FNV-style mixing)."""
    h = np.full(band.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(band.shape[1]):
            h = (h ^ band[:, j].astype(np.uint64)) * prime
    return h


def _candidate_pairs(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(M, 2)`` int64 candidate pairs (i < j): for every bucket of equal band hashes, the
    first member paired with each other member, and each member with the next one."""
    pairs = []
    for b in range(bands):
        h = _band_hashes(sig[:, b * rows : (b + 1) * rows])
        order = np.argsort(h, kind="stable")
        hs = h[order]
        same_as_prev = np.empty(len(hs), dtype=bool)
        same_as_prev[0] = False
        same_as_prev[1:] = hs[1:] == hs[:-1]
        if not same_as_prev.any():
            continue
        run_start = np.maximum.accumulate(np.where(~same_as_prev, np.arange(len(hs)), 0))
        members = np.nonzero(same_as_prev)[0]
        pairs.append(np.stack([order[run_start[members]], order[members]], axis=1))
        pairs.append(np.stack([order[members - 1], order[members]], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs).astype(np.int64)
    allp = allp[allp[:, 0] != allp[:, 1]]
    allp.sort(axis=1)
    return np.unique(allp, axis=0)


def near_duplicate_representatives(
    sig: np.ndarray, threshold: float, chunk: int = 200_000
) -> np.ndarray:
    """For signatures in keep-priority order (row 0 is preferred), return ``rep`` with
    ``rep[i] == i`` for kept rows and ``rep[i] = j < i`` (the kept row of its cluster) for
    near-duplicates."""
    n, num_perm = sig.shape
    rep = np.arange(n, dtype=np.int64)
    if n < 2:
        return rep
    bands, rows = lsh_params(threshold, num_perm)
    pairs = _candidate_pairs(sig, bands, rows)
    uf = _UnionFind(n)
    for start in range(0, len(pairs), chunk):
        p = pairs[start : start + chunk]
        similarity = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
        for a, b in p[similarity >= threshold]:
            uf.union(int(a), int(b))
    for i in np.unique(pairs) if len(pairs) else []:
        rep[i] = uf.find(int(i))
    return rep
