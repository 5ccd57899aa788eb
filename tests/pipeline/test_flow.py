"""The flow-matching module against analytic fields and the Z-Image pipeline's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.flow import (
    ema_decay,
    ema_update,
    euler,
    noised,
    timestep,
    transformer_velocity,
)
from pipeline.schedule import shifted_sigmas, sigma_index


def test_shifted_schedule_matches_the_design():
    assert shifted_sigmas(8) == pytest.approx(
        [1, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0], abs=1e-6)
    assert shifted_sigmas(2) == pytest.approx([1, 0.75, 0])
    assert shifted_sigmas(4, shift=1.0) == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_euler_is_exact_on_the_straight_path_of_a_known_pair():
    # For one (x0, eps) pair the true velocity field along its path is the constant
    # eps - x0, so Euler reaches x0 exactly from eps on any schedule and passes through
    # x_sigma = noised(x0, eps, sigma) at every grid point.
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    sigmas = shifted_sigmas(8)
    out = euler(lambda x, sigma: eps - x0, eps, sigmas, record=(0.75, 1.0, 0.0))
    torch.testing.assert_close(out.final, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.recorded[0.75], noised(x0, eps, torch.full((2,), 0.75)),
                               atol=1e-5, rtol=0)
    assert torch.equal(out.recorded[1.0], eps) and torch.equal(out.recorded[0.0], out.final)


def test_euler_on_a_linear_field_matches_the_closed_form_product():
    # v(x, sigma) = x: each step multiplies x by (1 + b - a).
    sigmas = shifted_sigmas(4)
    x = torch.ones(1, 1, 1, 1)
    expected = math.prod(1 + b - a for a, b in zip(sigmas[:-1], sigmas[1:], strict=True))
    assert euler(lambda x, sigma: x, x, sigmas).final.item() == pytest.approx(expected)


def test_off_grid_sigma_is_one_config_error_listing_the_grid():
    with pytest.raises(ConfigError, match=r"sigma_mid 0.7 is not on the teacher's 8-step "
                                          r"schedule \(choose one of 0\.9545, .*0\.7500"):
        sigma_index(0.7, shifted_sigmas(8), "sigma_mid")
    assert sigma_index(0.75, shifted_sigmas(8)) == 4
    with pytest.raises(ConfigError):
        euler(lambda x, sigma: x, torch.zeros(1, 1, 1, 1), shifted_sigmas(8), record=(0.7,))


def test_timestep_is_the_pipelines_float32_formula():
    sigma = torch.tensor([1.0, 0.954545, 0.75, 0.3, 0.0], dtype=torch.float64)
    t = timestep(sigma)
    assert t.dtype == torch.float32
    assert torch.equal(t, (1000 - sigma.float() * 1000) / 1000)


def test_transformer_velocity_negates_the_output_and_uses_the_models_patch(tiny_transformer):
    captions = [torch.randn(5, tiny_transformer.config.cap_feat_dim)]
    x = torch.randn(1, 3, 32, 32)
    sigma = torch.tensor([0.5])
    raw = tiny_transformer([x[0].unsqueeze(1)], timestep(sigma), captions,
                           patch_size=tiny_transformer.config.all_patch_size[0],
                           return_dict=False)[0][0].squeeze(1)
    torch.testing.assert_close(transformer_velocity(tiny_transformer, x, sigma, captions)[0],
                               -raw)


def test_ema_warms_up_then_holds_its_decay():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 10_000) == 0.999
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    # decay 0.1: 90% of the way to the model
    ema_update(ema.parameters(), model.parameters(), 0.99, step=0)
    torch.testing.assert_close(ema.weight, before + 0.9 * (model.weight - before))
