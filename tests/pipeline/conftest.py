"""Tiny models shared by the library tests."""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from pipeline.toy.teacher import teacher_config


@pytest.fixture
def tiny_transformer() -> ZImageTransformer2DModel:
    torch.manual_seed(0)
    return ZImageTransformer2DModel(**{**teacher_config(4, 32, 2, n_heads=2),
                                       "cap_feat_dim": 16}).eval()


@pytest.fixture
def captions() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 16, generator=g) for n in (5, 9, 3)]
