"""Image-level checks for the toy world that need no network."""

from __future__ import annotations

import torch

from pipeline.toy.prompts import BACKGROUNDS, COLORS

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
