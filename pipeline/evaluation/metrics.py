"""Generic image-set metrics (torch, float64 where precision matters).

Images are ``(N, 3, H, W)`` in [0, 1]; features ``(N, D)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)`` between
    Gaussians fit to features ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (the FID formula, unbiased
    covariances; NaN with fewer than 2 rows on a side).

    The cross term is computed in whichever space is smaller. With the centred features
    ``A``, ``B`` the nonzero eigenvalues of ``S_a^1/2 S_b S_a^1/2`` are those of ``S_b S_a``,
    the squared singular values of ``B A^T / sqrt((N-1)(M-1))``, so the term is the nuclear
    norm of that ``(M, N)`` matrix: exact, and far cheaper than two ``(D, D)``
    eigendecompositions when there are fewer samples than features (an Inception FID on a
    few hundred images: ``D`` = 2048). Otherwise: symmetric square roots of the ``(D, D)``
    covariances by eigendecomposition, negative eigenvalues from rounding clipped to 0."""
    a, b = a.double(), b.double()
    n, m = a.shape[0], b.shape[0]
    if min(n, m) < 2:
        return float("nan")
    mu_a, mu_b = a.mean(0), b.mean(0)
    centred_a, centred_b = a - mu_a, b - mu_b
    mean_term = (mu_a - mu_b).pow(2).sum()
    traces = centred_a.pow(2).sum() / (n - 1) + centred_b.pow(2).sum() / (m - 1)
    if max(n, m) < a.shape[1]:
        cross = torch.linalg.svdvals(centred_b @ centred_a.T).sum() / math.sqrt((n - 1) * (m - 1))
    else:
        cross = _sqrtm_trace_of_covariances(centred_a.T @ centred_a / (n - 1),
                                            centred_b.T @ centred_b / (m - 1))
    return float((mean_term + traces - 2 * cross).clamp(min=0))


EXTRAPOLATION_FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Subset sizes of :func:`extrapolated_frechet_distance`, as fractions of the rows."""


def extrapolated_frechet_distance(a: torch.Tensor, b: torch.Tensor, draws: int = 64,
                                  seed: int = 0) -> float:
    """The Frechet distance of paired features ``a``, ``b`` (both ``(N, D)``, row ``i`` of each
    from the same noise) extrapolated to infinitely many samples: ``FD_inf``.

    An FD estimated from ``n`` samples is biased upwards by about ``k / n`` (Chong and Forsyth,
    "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020): the FDs
    of :func:`frechet_distances_by_size` are fitted to ``FD_n = FD_inf + k / n``
    (:func:`fit_inverse_n`). Where two generators' FDs are small remainders of per-sample
    differences that mostly cancel, most of ``FD_N`` can be that bias, and ``FD_inf`` is what
    compares across eval-set sizes. NaN where the smallest subset has fewer than ``2 D`` rows:
    near ``n = D`` the covariances are rank-poor and the ``1/n`` law fails, or where ``a`` and
    ``b`` are not paired (shapes differ). Deterministic for a given ``seed``."""
    n_rows, dims = a.shape
    if b.shape != a.shape or round(min(EXTRAPOLATION_FRACTIONS) * n_rows) < 2 * dims:
        return float("nan")
    fd_inf, _ = fit_inverse_n(frechet_distances_by_size(a, b, draws, seed))
    return fd_inf if fd_inf > 0 else 0.0  # an FD is >= 0; the fit's intercept need not be


def frechet_distances_by_size(a: torch.Tensor, b: torch.Tensor, draws: int = 64,
                              seed: int = 0) -> list[tuple[int, float]]:
    """``[(n, FD of n random rows of a against the same rows of b)]``: ``draws`` subsets at
    each of :data:`EXTRAPOLATION_FRACTIONS` of the rows below the whole, the whole set once
    (the pairing of the rows is kept)."""
    n_rows = a.shape[0]
    gen = torch.Generator().manual_seed(seed)
    points = []
    for n in (round(f * n_rows) for f in EXTRAPOLATION_FRACTIONS):
        for _ in range(1 if n == n_rows else draws):
            rows = torch.randperm(n_rows, generator=gen)[:n]
            points.append((n, frechet_distance(a[rows], b[rows])))
    return points


def fit_inverse_n(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``(FD_inf, k)`` of ``FD_n = FD_inf + k / n`` over ``points``."""
    x = torch.tensor([[1.0, 1.0 / n] for n, _ in points], dtype=torch.float64)
    y = torch.tensor([[fd] for _, fd in points], dtype=torch.float64)
    fd_inf, k = torch.linalg.lstsq(x, y).solution.flatten().tolist()
    return fd_inf, k


def _sqrtm_trace_of_covariances(cov_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """``tr((S_a^1/2 S_b S_a^1/2)^1/2)`` by symmetric eigendecompositions of ``(D, D)``
    matrices."""

    def sqrtm(m: torch.Tensor) -> torch.Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T

    root_a = sqrtm(cov_a)
    return torch.trace(sqrtm(root_a @ cov_b @ root_a))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``(N,)`` (peak 1.0; identical images give +inf)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM ``(N,)`` (Wang et al. 2004: Gaussian window 11 / 1.5, C1 = 0.01^2,
    C2 = 0.03^2, per channel then averaged; 'valid' borders)."""
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=x.shape[1])

    a, b = a.double(), b.double()
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a.pow(2)
    var_b = blur(b * b) - mu_b.pow(2)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a.pow(2) + mu_b.pow(2) + c1) * (var_a + var_b + c2))
    return value.flatten(1).mean(1)


def mean_pairwise_distance(features: torch.Tensor, groups: list[int]) -> float:
    """Diversity: the mean L2 distance between the features of samples that share a group
    (e.g. the seeds of one prompt), averaged over groups with at least two samples; 0 means
    every seed gave the same image (mode collapse)."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    values = []
    for idx in by_group.values():
        if len(idx) < 2:
            continue
        f = features[idx].double()
        d = torch.cdist(f, f)
        n = len(idx)
        values.append(float(d.sum() / (n * (n - 1))))
    return sum(values) / len(values) if values else float("nan")


def groups_of(values: Sequence[Hashable]) -> list[int]:
    """Group ids ``(N,)`` for ``values`` (e.g. prompts): equal values share an id, numbered in
    order of first appearance."""
    ids: dict[Hashable, int] = {}
    return [ids.setdefault(v, len(ids)) for v in values]


def cross_seed_halves(groups: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split samples into two halves ``(a, b)`` of equal length that hold the same prompts
    from different noise: within each group (one prompt's seeds, in order) consecutive
    samples ``(i, j)`` go ``i`` to ``a`` and ``j`` to ``b``; a group's odd sample out and
    single-sample groups are left out. ``a[k]`` and ``b[k]`` share a prompt."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    a: list[int] = []
    b: list[int] = []
    for idx in by_group.values():
        for k in range(0, len(idx) - 1, 2):
            a.append(idx[k])
            b.append(idx[k + 1])
    return a, b


def unpaired_frechet_distance(features: torch.Tensor, reference: torch.Tensor,
                              groups: Sequence[int]) -> float:
    """Frechet distance of a generator to a reference on the same prompts but other noise:
    ``(FD(f[a], r[b]) + FD(f[b], r[a])) / 2`` with ``a, b`` from :func:`cross_seed_halves`
    (features ``(N, D)``, row ``i`` of both from the same prompt and noise). Unlike the paired
    FD (``frechet_distance(features, reference)``), copying the reference's images sample
    for sample earns nothing here: the reference's own score, ``FD(r[a], r[b])``, is the
    floor any generator of its distribution reaches at this sample size. NaN with fewer than
    two cross-seed pairs (an FD needs two samples a side)."""
    a, b = cross_seed_halves(groups)
    if len(a) < 2:
        return float("nan")
    return (frechet_distance(features[a], reference[b])
            + frechet_distance(features[b], reference[a])) / 2
