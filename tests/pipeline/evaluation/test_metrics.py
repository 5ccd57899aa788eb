"""Metrics against analytic values and known orderings."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.metrics import frechet_distance, mean_pairwise_distance, psnr, ssim


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # |mu|^2 + tr(I + 4I - 2 * 2I) = 1 + 3 * (1 + 4 - 4) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_psnr_and_ssim():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noisy = (x + 0.1 * torch.randn(2, 3, 32, 32)).clamp(0, 1)
    assert torch.isinf(psnr(x, x)).all()
    assert psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)).item() == \
        pytest.approx(20.0)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    s = ssim(x, noisy)
    assert (s < 0.95).all() and (s > 0).all()


def test_diversity_is_zero_for_identical_seeds_and_grows_with_spread():
    same = torch.ones(4, 5)
    assert mean_pairwise_distance(same, [0, 0, 1, 1]) == 0.0
    spread = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    assert mean_pairwise_distance(spread, [0, 0, 1, 1]) == pytest.approx(7.5)
    assert math.isnan(mean_pairwise_distance(same, [0, 1, 2, 3]))
