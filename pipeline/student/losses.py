"""Losses. Regression distances are per-sample means then batch means; adversarial losses take
logits ``(B,)``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def regression(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse",
               huber_c: float = 0.03) -> torch.Tensor:
    """``mse``: mean squared error; ``pseudo_huber``: ``sqrt(mse_i + c^2) - c`` per sample."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if kind == "mse":
        return per_sample.mean()
    if kind == "pseudo_huber":
        return ((per_sample + huber_c**2).sqrt() - huber_c).mean()
    raise ValueError(f"unknown regression loss {kind!r}")


def generator_adversarial(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "non_saturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown adversarial loss {kind!r}")


def discriminator_adversarial(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                              kind: str) -> torch.Tensor:
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown adversarial loss {kind!r}")


def adversarial_ramp(step: int, start: int, warmup: int) -> float:
    """The generator's adversarial weight factor at ``step`` (0-based): 0 before ``start``,
    then linear from 0 to 1 over ``warmup`` steps (at once with ``warmup`` 0)."""
    if step < start:
        return 0.0
    return min(1.0, (step - start) / warmup) if warmup else 1.0


def adaptive_adversarial_gradient(
        x0: torch.Tensor, x0_leaf: torch.Tensor, reference: torch.Tensor,
        adversarial: torch.Tensor, ratio: float, ramp: float = 1.0,
        feature: torch.Tensor | None = None, feature_weight: float = 0.0,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive adversarial weight (VQGAN, Esser et al. 2021, eq. 7, there on the
    decoder's last layer, here on the generator's output) and the gradient that the
    discriminator's terms send into the generator's output.

    ``x0`` ``(B, C, H, W)``: the generator's output (in the graph); ``x0_leaf``: its detached
    leaf copy, the input of the discriminator that computed the scalar ``adversarial`` (and
    ``feature``); ``reference``: the scalar regression term that sets the scale, a function of
    ``x0``. Returns the weight ``w = ratio * |d reference / d x0| / |d adversarial / d x0|``
    (a 0-dim tensor, no gradient through it) and ``g = ramp * w * d adversarial / d x0 +
    feature_weight * d feature / d x0`` ``(B, C, H, W)``, float32; ``(x0 * g).sum()`` added to
    the other terms' loss gives the student the gradient of ``ramp * w * adversarial +
    feature_weight * feature``. ``all_reduce`` sums the two squared norms over the ranks of a
    data-parallel group, each holding a share of the batch (None: one process)."""
    (g_reference,) = torch.autograd.grad(reference, x0, retain_graph=True)
    (g_adversarial,) = torch.autograd.grad(adversarial, x0_leaf,
                                           retain_graph=feature is not None)
    squares = torch.stack([g_reference.float().pow(2).sum(),
                           g_adversarial.float().pow(2).sum()])
    if all_reduce is not None:
        squares = all_reduce(squares)
    weight = ratio * squares[0].sqrt() / squares[1].sqrt().clamp_min(1e-12)
    gradient = ramp * weight * g_adversarial.float()
    if feature is not None:
        (g_feature,) = torch.autograd.grad(feature, x0_leaf)
        gradient = gradient + feature_weight * g_feature.float()
    return weight, gradient


def discriminator_accuracy(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> float:
    """Balanced accuracy of the sign of the logits: the mean of the real side's rate of
    ``> 0`` and the fake side's rate of ``< 0`` (0.5: chance)."""
    return 0.5 * ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()).item()


def twice_differentiable_attention(enabled: bool = True):
    """Inside: scaled-dot-product attention on the math kernel, whose backward is itself
    differentiable. R1 backpropagates through ``grad_x D(x)``, and the fused kernels (flash
    on CPU and CUDA, memory-efficient) have no double backward ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented")."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """``E ||grad_x D(x)||^2`` on real inputs (``real_inputs`` must require grad; run the
    forward inside :func:`twice_differentiable_attention` when it has attention)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()
