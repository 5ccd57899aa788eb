from __future__ import annotations

import math

import pytest
import torch

from pipeline.student.losses import (
    discriminator_adversarial,
    generator_adversarial,
    r1_penalty,
    regression,
)


def test_regression_values():
    pred, target = torch.zeros(2, 4), torch.tensor([[1.0] * 4, [0.0] * 4])
    assert regression(pred, target, "mse").item() == pytest.approx(0.5)
    c = 0.5
    expected = ((math.sqrt(1 + c * c) - c) + 0.0) / 2
    assert regression(pred, target, "pseudo_huber", c).item() == pytest.approx(expected)


def test_adversarial_losses_at_zero_logits():
    z = torch.zeros(4)
    assert generator_adversarial(z, "non_saturating").item() == pytest.approx(math.log(2))
    assert discriminator_adversarial(z, z, "non_saturating").item() == pytest.approx(
        2 * math.log(2))
    assert discriminator_adversarial(z, z, "hinge").item() == pytest.approx(2.0)
    assert generator_adversarial(torch.ones(4), "hinge").item() == pytest.approx(-1.0)


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.tensor([1.0, 2.0, 3.0])
    x = torch.randn(5, 3, requires_grad=True)
    assert r1_penalty(x @ w, x).item() == pytest.approx(14.0)
