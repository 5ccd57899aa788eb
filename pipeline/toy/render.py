"""Deterministic, anti-aliased renderer of the toy world (32x32 RGB, exactly one shape).

A :class:`Scene` fixes every attribute and the jitter; :func:`sample_scene` draws the
attributes a prompt leaves out uniformly, plus the jitter, from a seed. Rendering uses 4x4
supersampling per pixel, so edges are anti-aliased and the output is a pure function of the
scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from pipeline.toy.prompts import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ToyAttributes

IMAGE_SIZE = 32
SIZE_PX = {"small": 8.0, "large": 14.0}
GRID_PX = (8.0, 16.0, 24.0)
MAX_POSITION_JITTER = 2.0
MAX_SIZE_JITTER = 1.0
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """Everything that determines one image."""

    size: str
    color: str
    shape: str
    position: int
    background: str
    dx: float = 0.0
    dy: float = 0.0
    dsize: float = 0.0

    @property
    def attributes(self) -> ToyAttributes:
        return ToyAttributes(self.size, self.color, self.shape, self.position, self.background)


def sample_scene(attrs: ToyAttributes, seed: int) -> Scene:
    """Fill what ``attrs`` leaves out uniformly and add jitter; deterministic in ``seed``."""
    rng = random.Random(seed)
    return Scene(
        size=attrs.size or rng.choice(SIZES),
        color=attrs.color or rng.choice(tuple(COLORS)),
        shape=attrs.shape or rng.choice(SHAPES),
        position=attrs.position if attrs.position is not None else rng.randrange(len(POSITIONS)),
        background=attrs.background or rng.choice(tuple(BACKGROUNDS)),
        dx=rng.uniform(-MAX_POSITION_JITTER, MAX_POSITION_JITTER),
        dy=rng.uniform(-MAX_POSITION_JITTER, MAX_POSITION_JITTER),
        dsize=rng.uniform(-MAX_SIZE_JITTER, MAX_SIZE_JITTER),
    )


def _coverage(scene: Scene) -> np.ndarray:
    """Fraction of each pixel covered by the shape, ``(32, 32)`` float32 in [0, 1]."""
    n = IMAGE_SIZE * _SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / _SUPERSAMPLE  # sample centres in px
    y, x = np.meshgrid(coords, coords, indexing="ij")
    cx = GRID_PX[scene.position % 3] + scene.dx
    cy = GRID_PX[scene.position // 3] + scene.dy
    extent = SIZE_PX[scene.size] + scene.dsize
    half = extent / 2.0
    if scene.shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif scene.shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    else:  # triangle pointing up, base `extent` wide, height `extent`
        top, bottom = cy - half, cy + half
        rel = (y - top) / extent  # 0 at the apex, 1 at the base
        inside = (y >= top) & (y <= bottom) & (np.abs(x - cx) <= rel * half)
    cov = inside.reshape(IMAGE_SIZE, _SUPERSAMPLE, IMAGE_SIZE, _SUPERSAMPLE).mean(axis=(1, 3))
    return cov.astype(np.float32)


def render(scene: Scene) -> np.ndarray:
    """``(32, 32, 3)`` uint8 RGB image of the scene."""
    cov = _coverage(scene)[..., None]
    fg = np.array(COLORS[scene.color], dtype=np.float32)
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    return np.rint(cov * fg + (1.0 - cov) * bg).astype(np.uint8)


def render_prompt_seed(attrs: ToyAttributes, seed: int) -> tuple[np.ndarray, Scene]:
    """Ground-truth image for a prompt's attributes and a seed."""
    scene = sample_scene(attrs, seed)
    return render(scene), scene


def render_toy_prompts(prompts: list[str], seeds: list[int]):
    """Ground-truth images ``(N, 3, 32, 32)`` in [0, 1] for toy prompts: what each prompt names
    is fixed, the rest is drawn from its seed (the "real data" of the toy world). Words
    outside the toy vocabulary are ignored with a warning."""
    import logging

    import torch

    from pipeline.toy.prompts import parse_prompt

    images = []
    unknown: set[str] = set()
    for prompt, seed in zip(prompts, seeds, strict=True):
        attrs, words = parse_prompt(prompt)
        unknown.update(words)
        images.append(torch.from_numpy(render_prompt_seed(attrs, seed)[0]))
    if unknown:
        logging.getLogger(__name__).warning("ignored words outside the toy vocabulary: %s",
                                            ", ".join(sorted(unknown)))
    return torch.stack(images).permute(0, 3, 1, 2).float() / 255.0
