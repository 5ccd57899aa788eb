from __future__ import annotations

import numpy as np

from pipeline.toy.prompts import BACKGROUNDS, COLORS, ToyAttributes
from pipeline.toy.render import Scene, render, sample_scene


def test_render_is_deterministic_and_pure_coloured():
    scene = sample_scene(ToyAttributes(color="red", background="white"), seed=7)
    img = render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render(scene))
    colours = {tuple(p) for p in img.reshape(-1, 3)}
    assert COLORS["red"] in colours and BACKGROUNDS["white"] in colours


def test_named_attributes_are_respected_and_omitted_ones_vary():
    attrs = ToyAttributes(shape="square", position=0)
    scenes = [sample_scene(attrs, seed) for seed in range(200)]
    assert all(s.shape == "square" and s.position == 0 for s in scenes)
    assert len({s.color for s in scenes}) == 6 and len({s.background for s in scenes}) == 3
    assert all(abs(s.dx) <= 2 and abs(s.dy) <= 2 and abs(s.dsize) <= 1 for s in scenes)


def test_size_and_position_show_in_the_pixels():
    def mask(scene: Scene) -> np.ndarray:
        return np.any(render(scene) != BACKGROUNDS["black"], axis=-1)

    small = mask(Scene("small", "green", "square", 0, "black"))
    large = mask(Scene("large", "green", "square", 8, "black"))
    assert 40 < small.sum() < 100 and 150 < large.sum() < 260
    ys, xs = np.nonzero(small)
    assert abs(xs.mean() - 7.5) < 1 and abs(ys.mean() - 7.5) < 1
    ys, xs = np.nonzero(large)
    assert abs(xs.mean() - 23.5) < 1 and abs(ys.mean() - 23.5) < 1
