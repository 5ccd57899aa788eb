"""The discriminator: frozen backbone features, trainable prompt-conditioned heads."""

from __future__ import annotations

import pytest
import torch

from pipeline.flow import noised
from pipeline.student.discriminator import (
    BackboneFeatures,
    Discriminator,
    feature_distance,
    frozen_copy,
)


def test_logits_heads_only_and_gradients_reach_the_input(tiny_transformer, captions):
    disc = Discriminator(frozen_copy(tiny_transformer), layers=[0, -1], hidden=16)
    assert disc.layers == [0, 1]
    names = [n for n, _ in disc.named_parameters()]
    assert names and all(n.startswith("heads.") for n in names)
    assert set(disc.state_dict()) == set(dict(disc.named_parameters()))
    x0 = torch.randn(3, 3, 32, 32, requires_grad=True)
    logits = disc(x0, captions, torch.full((3,), 0.3), torch.randn(3, 3, 32, 32))
    assert logits.shape == (3,)
    logits.sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.backbone.parameters())


def test_early_exit_features_equal_a_full_forward(tiny_transformer, captions):
    disc = Discriminator(frozen_copy(tiny_transformer), layers=[0], hidden=16)
    x, sigma = torch.randn(3, 3, 32, 32), torch.full((3,), 0.5)
    seen = {}
    def grab(_module, _inputs, output):
        seen["out"] = output[:, :64]

    handle = disc.backbone.layers[0].register_forward_hook(grab)
    from pipeline.flow import transformer_velocity

    transformer_velocity(disc.backbone, x, sigma, captions)
    handle.remove()
    (feats,) = disc.backbone_features(x, sigma, captions)
    torch.testing.assert_close(feats, seen["out"])


def test_prompt_changes_the_logit(tiny_transformer, captions):
    torch.manual_seed(0)
    disc = Discriminator(frozen_copy(tiny_transformer), layers=[1], hidden=16)
    x0, eps, sigma = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32), torch.tensor([0.2])
    a = disc(x0, captions[:1], sigma, eps)
    b = disc(x0, captions[1:2], sigma, eps)
    assert not torch.allclose(a, b)


def test_bad_layer_index_is_clear(tiny_transformer):
    with pytest.raises(ValueError, match="outside 0..1"):
        Discriminator(frozen_copy(tiny_transformer), layers=[5], hidden=8)


def test_r1_backpropagates_through_the_transformer_discriminator(tiny_transformer, captions):
    """R1 differentiates grad_x D(x): the fused attention kernels cannot, the math one can."""
    from pipeline.student.losses import r1_penalty, twice_differentiable_attention

    disc = Discriminator(frozen_copy(tiny_transformer), layers=[0, -1], hidden=16)
    real = torch.randn(3, 3, 32, 32, requires_grad=True)
    with twice_differentiable_attention():
        logits = disc(real, captions, torch.full((3,), 0.05), torch.randn(3, 3, 32, 32))
    penalty = r1_penalty(logits, real)
    penalty.backward()
    assert penalty.item() > 0
    # grad_x D depends on the heads' weights (not on their output biases)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.heads.parameters())


def test_feature_distance_is_zero_only_for_the_same_image_and_reaches_the_student(
        tiny_transformer, captions):
    disc = Discriminator(frozen_copy(tiny_transformer), layers=[0, 1], hidden=16)
    sigma, noise = torch.full((3,), 0.2), torch.randn(3, 3, 32, 32)
    teacher = torch.randn(3, 3, 32, 32)
    student = (teacher + 0.3 * torch.randn(3, 3, 32, 32)).requires_grad_(True)
    real = disc.backbone_features(noised(teacher, noise, sigma), sigma, captions)
    torch.testing.assert_close(disc.head_logits(real, captions),
                               disc(teacher, captions, sigma, noise))
    assert feature_distance(real, real).item() == 0.0
    # The perceptual term alone needs no heads: the same features from the backbone alone.
    alone = BackboneFeatures(disc.backbone, [0, 1])
    fake = alone(noised(student, noise, sigma), sigma, captions)
    distance = feature_distance(fake, [r.detach() for r in real])
    assert distance.item() > 0
    distance.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
