"""Image-level checks for the toy world that need no network."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.toy.prompts import BACKGROUNDS, COLORS, ToyAttributes, ToyPrompt

ATTRIBUTES = ("size", "color", "shape", "position", "background")

_PALETTE = torch.tensor(list(COLORS.values()) + list(BACKGROUNDS.values()),
                        dtype=torch.float32) / 255.0


def palette_purity(images: torch.Tensor, tolerance: float = 0.15) -> torch.Tensor:
    """Per image, the fraction of pixels within ``tolerance`` (max over channels, images in
    [0, 1]) of a pure toy colour or background. Ground-truth renders score ~0.98 (only
    anti-aliased edges miss); blurred or mode-averaged samples score much lower.

    ``images``: ``(N, 3, H, W)`` in [0, 1] -> ``(N,)``.
    """
    pixels = images.permute(0, 2, 3, 1).unsqueeze(-2)  # (N, H, W, 1, 3)
    distance = (pixels - _PALETTE.to(images.device)).abs().amax(dim=-1)  # (N, H, W, 9)
    return (distance.amin(dim=-1) <= tolerance).float().mean(dim=(1, 2))


def named_attribute_accuracy(
    prompts: Sequence[ToyPrompt], predicted: Sequence[ToyAttributes]
) -> dict[str, float]:
    """Per attribute, the fraction of images whose predicted value equals what the prompt
    names, over the prompts that name that attribute (4 decimals). An attribute that no
    prompt names is left out: it was never asked for, so it has no accuracy (0 would read as
    a generator that always gets it wrong)."""
    result = {}
    for name in ATTRIBUTES:
        pairs = [(getattr(p.attributes, name), getattr(q, name))
                 for p, q in zip(prompts, predicted, strict=True)
                 if getattr(p.attributes, name) is not None]
        if pairs:
            result[name] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
    return result
