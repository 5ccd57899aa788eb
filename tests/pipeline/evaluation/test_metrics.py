"""Metrics against analytic values and known orderings."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.metrics import (
    _sqrtm_trace_of_covariances,
    cross_seed_halves,
    extrapolated_frechet_distance,
    frechet_distance,
    groups_of,
    mean_pairwise_distance,
    psnr,
    ssim,
    unpaired_frechet_distance,
)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # |mu|^2 + tr(I + 4I - 2 * 2I) = 1 + 3 * (1 + 4 - 4) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_the_extrapolated_frechet_distance_removes_most_of_the_small_sample_bias():
    """Paired features a student-like generator gives (the reference plus a small error of
    its own and a small shift): the FD of 400 rows is several times the population's, the
    extrapolation lands near it (Chong and Forsyth's FD_inf), on every draw of the data."""
    dims, rows, shift, noise = 32, 400, 0.02, 0.3
    # population FD: |shift|^2 D + D (sqrt(1 + noise^2) - 1)^2 (isotropic covariances)
    true = dims * shift ** 2 + dims * (math.sqrt(1 + noise ** 2) - 1) ** 2
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(rows, dims, generator=g)
        b = a + noise * torch.randn(rows, dims, generator=g) + shift
        biased, extrapolated = frechet_distance(a, b), extrapolated_frechet_distance(a, b)
        assert biased > 2 * true
        assert abs(extrapolated - true) < 0.35 * (biased - true)
    assert extrapolated_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert extrapolated_frechet_distance(a, b) == extrapolated_frechet_distance(a, b)  # seeded


def test_the_extrapolated_frechet_distance_needs_twice_the_dimensions_in_half_the_rows():
    a = torch.randn(60, 16)
    assert math.isnan(extrapolated_frechet_distance(a, a + 0.1))  # 30 rows < 2 * 16
    assert math.isfinite(extrapolated_frechet_distance(torch.randn(64, 16), a[:1].repeat(64, 1)
                                                       + torch.randn(64, 16)))
    assert math.isnan(extrapolated_frechet_distance(a, a[:40]))  # not paired


def test_fewer_samples_than_features_gives_the_covariance_routes_value():
    """The cross term from the samples' (M, N) matrix equals the (D, D) eigendecomposition
    route, also for correlated features and unequal sample counts."""
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(300, 300, generator=g) / 10
    a = torch.randn(40, 300, generator=g) @ mix
    b = torch.randn(25, 300, generator=g) @ mix * 1.5 + 0.2
    a64, b64 = a.double(), b.double()
    by_covariances = (a64.mean(0) - b64.mean(0)).pow(2).sum() + torch.cov(a64.T).trace() \
        + torch.cov(b64.T).trace() - 2 * _sqrtm_trace_of_covariances(torch.cov(a64.T),
                                                                     torch.cov(b64.T))
    # rel 1e-6: the eigen route takes square roots of the ~1e-16 rounding left in the ~260
    # zero eigenvalues of these rank-deficient covariances (3e-8 relative here)
    assert frechet_distance(a, b) == pytest.approx(float(by_covariances), rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert math.isnan(frechet_distance(a[:1], b))


def test_psnr_and_ssim():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # seeded: SSIM at noise 0.1 is ~0.945 +- 0.004 over draws, too close to a fixed bound
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    noisy = (x + 0.1 * noise).clamp(0, 1)
    assert torch.isinf(psnr(x, x)).all()
    assert psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)).item() == \
        pytest.approx(20.0)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    s = ssim(x, noisy)
    assert (s < 0.97).all() and (s > 0).all()
    assert (ssim(x, (x + 0.3 * noise).clamp(0, 1)) < s - 0.1).all()  # more noise, lower


def test_diversity_is_zero_for_identical_seeds_and_grows_with_spread():
    same = torch.ones(4, 5)
    assert mean_pairwise_distance(same, [0, 0, 1, 1]) == 0.0
    spread = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    assert mean_pairwise_distance(spread, [0, 0, 1, 1]) == pytest.approx(7.5)
    assert math.isnan(mean_pairwise_distance(same, [0, 1, 2, 3]))


def test_cross_seed_halves_pair_the_seeds_of_a_prompt_and_drop_the_odd_one_out():
    a, b = cross_seed_halves([5, 5, 7, 9, 9, 9, 7, 4])
    assert (a, b) == ([0, 2, 3], [1, 6, 4])
    assert cross_seed_halves([1, 2, 3]) == ([], [])
    assert groups_of(["b", "a", "b", "c", "a"]) == [0, 1, 0, 2, 1]


def _prompt_world(groups: int, seeds: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Features of ``groups`` prompts x ``seeds`` noises: a prompt's content plus its noise."""
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(groups, 1, 4, generator=torch.Generator().manual_seed(99)) * 2
    noise = torch.randn(groups, seeds, 4, generator=g)
    return (content + noise + shift).reshape(groups * seeds, 4)


def test_unpaired_fd_gives_a_sample_copy_no_credit_and_tells_a_shifted_generator_apart():
    groups = [i // 2 for i in range(4000)]
    reference = _prompt_world(2000, 2, seed=0)
    floor = unpaired_frechet_distance(reference, reference, groups)
    a, b = cross_seed_halves(groups)
    assert floor == pytest.approx(frechet_distance(reference[a], reference[b]))
    assert floor > 0 and frechet_distance(reference, reference) == pytest.approx(0, abs=1e-6)
    # Same distribution, other noise: about the reference's own floor (both are sampling
    # error at this size), while the paired FD of the copy above was 0.
    fresh = unpaired_frechet_distance(_prompt_world(2000, 2, seed=1), reference, groups)
    assert fresh < 4 * floor + 0.02
    shifted = unpaired_frechet_distance(_prompt_world(2000, 2, seed=1, shift=0.5), reference,
                                        groups)
    assert shifted > 1.0 - 0.1  # |mu shift|^2 = 4 * 0.25
    assert shifted > 10 * floor
    assert math.isnan(unpaired_frechet_distance(reference[:3], reference[:3], [0, 1, 2]))
    # one prompt with two seeds is one cross-seed pair: too few for an FD, as no pair at all
    assert math.isnan(unpaired_frechet_distance(reference[:3], reference[:3], [0, 0, 1]))
    assert math.isfinite(unpaired_frechet_distance(reference[:4], reference[:4], [0, 0, 1, 1]))
