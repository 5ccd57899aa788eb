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


def test_attribute_accuracy_leaves_out_what_no_prompt_names():
    """A corpus whose prompts never name size, position or background (a file of one's own)
    gets no 0% for them, and its mean is over what they name."""
    from pipeline.evaluation.toy import ToyScorer
    from pipeline.toy.metrics import named_attribute_accuracy
    from pipeline.toy.prompts import ToyPrompt, parse_prompt
    from pipeline.toy.render import render, sample_scene

    prompts = ["a red circle", "a blue square"]
    parsed = [ToyPrompt(p, parse_prompt(p)[0]) for p in prompts]
    images = torch.stack([torch.from_numpy(render(sample_scene(p.attributes, seed=i)))
                          for i, p in enumerate(parsed)]).permute(0, 3, 1, 2) / 255
    scores = ToyScorer().score(images, prompts)
    assert {"color", "shape"} <= set(scores) and not {"size", "position", "background"} & set(
        scores)
    assert scores["mean_accuracy"] == round((scores["color"] + scores["shape"]) / 2, 4)
    assert named_attribute_accuracy(parsed[:0], []) == {}
