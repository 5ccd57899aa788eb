"""Toy-world scores by the shipped feature network: named-attribute accuracy, palette purity
and validity, features for the toy Frechet distance."""

from __future__ import annotations

import torch

from pipeline.toy.features import HEADS, load_feature_net
from pipeline.toy.metrics import named_attribute_accuracy, palette_purity
from pipeline.toy.prompts import ToyPrompt, parse_prompt

VALID_PURITY = 0.9


class ToyScorer:
    """Scores ``(N, 3, 32, 32)`` images in [0, 1] against the prompts that produced them."""

    def __init__(self) -> None:
        self.net = load_feature_net().eval()

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Penultimate features ``(N, 128)``: the space of the toy Frechet distance."""
        return torch.cat([self.net(images[i:i + batch] * 2 - 1)[0]
                          for i in range(0, len(images), batch)])

    def score(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """Per-attribute accuracy over the prompts naming it (an attribute no prompt names is
        left out), their mean, palette purity and the valid rate (purity >= 0.9: one crisp
        shape of pure colours)."""
        parsed = [ToyPrompt(p, parse_prompt(p)[0]) for p in prompts]
        predicted = []
        for i in range(0, len(images), 512):
            predicted += self.net.predict(images[i:i + 512] * 2 - 1)
        result = dict(named_attribute_accuracy(parsed, predicted))
        named = [result[h] for h in HEADS if h in result]
        if named:
            result["mean_accuracy"] = round(sum(named) / len(named), 4)
        purity = palette_purity(images)
        result["palette_purity"] = round(purity.mean().item(), 4)
        result["valid_rate"] = round((purity >= VALID_PURITY).float().mean().item(), 4)
        return result
