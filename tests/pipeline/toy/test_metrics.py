from __future__ import annotations

import torch

from pipeline.toy.features import render_set
from pipeline.toy.metrics import palette_purity


def test_palette_purity_separates_renders_from_blur_and_mixtures():
    images = (render_set(64, seed=3).images + 1) / 2
    clean = palette_purity(images)
    assert clean.min() > 0.9
    blurred = palette_purity(torch.nn.functional.avg_pool2d(images, 5, 1, 2))
    mixed = palette_purity((images + images.roll(1, 0)) / 2)
    assert blurred.mean() < clean.mean() - 0.1 and mixed.mean() < 0.6
