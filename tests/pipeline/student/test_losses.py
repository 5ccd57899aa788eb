from __future__ import annotations

import math

import pytest
import torch

from pipeline.student.losses import (
    adaptive_adversarial_gradient,
    adversarial_ramp,
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


def _generator_and_critic():
    """A tiny generator (its parameters, its output x0 (4, 2, 3, 3)) and a differentiable
    critic of x0 standing in for the discriminator's adversarial and feature terms."""
    torch.manual_seed(0)
    weight = torch.randn(2, 2, requires_grad=True)
    z = torch.randn(4, 2, 3, 3)
    target = torch.randn(4, 2, 3, 3)
    probe = torch.randn(2, 3, 3)

    def x0_of() -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", weight, z).tanh()

    def critic(x0, rows=slice(None)):  # adversarial (non-saturating, nonlinear logit), feature
        logits = (x0 * probe).flatten(1).sum(1).sin() * 3
        return generator_adversarial(logits, "non_saturating"), (x0 - target[rows]).pow(4).mean()

    return weight, x0_of, critic, target


@pytest.mark.parametrize("feature_weight", [0.0, 0.7])
def test_adaptive_adversarial_gradient_is_the_weighted_losses_gradient(feature_weight):
    """The student gets the gradient of ``ramp * w * adv + feature_weight * feature`` (w held
    constant), and ``w |grad adv| = ratio |grad reference|`` on x0."""
    weight, x0_of, critic, target = _generator_and_critic()
    ratio, ramp = 0.3, 0.5
    x0 = x0_of()
    leaf = x0.detach().requires_grad_()
    adv, feature = critic(leaf)
    reference = regression(x0, target)
    w, g = adaptive_adversarial_gradient(
        x0, leaf, reference, adv, ratio, ramp,
        feature=feature if feature_weight else None, feature_weight=feature_weight)
    (reference + (x0 * g).sum()).backward()
    surrogate = weight.grad.clone()

    weight.grad = None
    x0 = x0_of()
    adv, feature = critic(x0)
    g_ref = torch.autograd.grad(regression(x0, target), x0, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, x0, retain_graph=True)[0]
    assert w.item() == pytest.approx(ratio * g_ref.norm().item() / g_adv.norm().item())
    assert w.item() * g_adv.norm().item() == pytest.approx(ratio * g_ref.norm().item())
    (regression(x0, target) + ramp * w.detach() * adv + feature_weight * feature).backward()
    torch.testing.assert_close(surrogate, weight.grad)


def test_adaptive_weight_sums_squared_norms_over_ranks():
    """Two ranks with half the batch each get the weight one process gets for the whole: the
    squared norms are summed (here by a stand-in for all_reduce that adds the other rank's)."""
    _, x0_of, critic, target = _generator_and_critic()

    def weight_and_squares(rows):
        x0 = x0_of()[rows]
        leaf = x0.detach().requires_grad_()
        adv = critic(leaf, rows)[0]  # means over this rank's rows, as on a data-parallel rank
        ref = regression(x0, target[rows])
        seen = {}

        def keep(t):
            seen["squares"] = t.clone()
            return t

        w, _ = adaptive_adversarial_gradient(x0, leaf, ref, adv, 1.0, all_reduce=keep)
        return w, seen["squares"]

    whole, _ = weight_and_squares(slice(0, 4))
    _, first = weight_and_squares(slice(0, 2))
    _, second = weight_and_squares(slice(2, 4))
    summed = first + second  # each rank's means are over 2 rows, not 4: the same factor 2 on
    # both gradients, which the ratio does not see
    assert (summed[0].sqrt() / summed[1].sqrt()).item() == pytest.approx(whole.item())


def test_the_adversarial_ramp_is_zero_before_its_start_then_linear_over_the_warm_up():
    # start 0 is the warm-up ramp as it was before adv_start_step existed (bit-identical runs)
    assert [adversarial_ramp(k, 0, 70) for k in range(200)] == \
        [min(1.0, k / 70) for k in range(200)]
    assert [adversarial_ramp(k, 0, 0) for k in range(3)] == [1.0, 1.0, 1.0]
    late = [adversarial_ramp(k, 150, 10) for k in range(200)]
    assert late[:151] == [0.0] * 151
    assert late[155] == 0.5 and late[160:] == [1.0] * 40
    assert [adversarial_ramp(k, 5, 0) for k in (4, 5)] == [0.0, 1.0]
