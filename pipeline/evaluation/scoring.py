"""Scores of every generator's evaluation images against the teacher's (the reference) and,
for the toy world, against ground-truth renders of the same prompts.

Toy metrics come from the shipped feature network (:class:`~pipeline.evaluation.toy.ToyScorer`):
named-attribute accuracy, validity, Frechet distance to the teacher from the same noise
(``fd_teacher``, paired; ``fd_teacher_inf`` the same extrapolated to infinitely many samples)
and from the other seeds of the same prompts (``fd_teacher_unpaired``: the teacher's own value
is the floor of its distribution), to the data (``fd_data``), and
diversity across the seeds of a prompt. Every generator but the
reference also gets PSNR/SSIM against the reference image from the same noise; real-domain
plugins (FID/KID, CLIP score) add theirs when configured.
"""

from __future__ import annotations

import logging
import math

import torch

from pipeline.evaluation.metrics import (
    extrapolated_frechet_distance,
    frechet_distance,
    mean_pairwise_distance,
    psnr,
    ssim,
    unpaired_frechet_distance,
)
from schemas.config import RealMetricsConfig


def real_metric_scores(config: RealMetricsConfig, reference: torch.Tensor,
                       images: dict[str, torch.Tensor], prompts: list[str], groups: list[int],
                       log: logging.Logger) -> dict[str, dict[str, float]]:
    """Generator -> values of the real-domain plugins switched on in ``config`` (FID/KID,
    CLIP score); each plugin is loaded, used and dropped in turn."""
    from pipeline.evaluation.real import real_metric_plugins

    out: dict[str, dict[str, float]] = {name: {} for name in images}
    for plugin in real_metric_plugins(config):
        plugin.prepare(reference)
        for name, img in images.items():
            out[name].update(plugin.score(img, prompts, groups))
        log.info("evaluate: scored %d generators with %s", len(images), plugin.name)
        del plugin
    return out


def score_generators(images: dict[str, torch.Tensor], reference_name: str, prompts: list[str],
                     seeds: list[int], groups: list[int], toy: bool,
                     real_metrics: RealMetricsConfig, log: logging.Logger,
                     ) -> dict[str, dict[str, float]]:
    """Generator -> metrics. ``images``: name -> ``(N, 3, H, W)`` in [0, 1], sample ``i`` of
    each from the same prompt ``prompts[i]`` and noise; ``groups[i]`` identifies the prompt
    (diversity is measured within a group); ``seeds[i]`` seeds the toy ground-truth render."""
    reference = images[reference_name]
    scores: dict[str, dict[str, float]] = {name: {} for name in images}
    if toy:
        from pipeline.evaluation.toy import ToyScorer
        from pipeline.toy.render import render_toy_prompts

        scorer = ToyScorer()
        ref_feats = scorer.features(reference)
        truth_feats = scorer.features(render_toy_prompts(prompts, seeds))
        for name, img in images.items():
            feats = scorer.features(img)
            m = scores[name]
            m.update(scorer.score(img, prompts))
            m["fd_teacher"] = round(frechet_distance(feats, ref_feats), 4)
            fd_inf = extrapolated_frechet_distance(feats, ref_feats)
            if math.isfinite(fd_inf):  # needs twice the feature dimensions in half the set
                m["fd_teacher_inf"] = round(fd_inf, 4)
            m["fd_data"] = round(frechet_distance(feats, truth_feats), 4)
            unpaired = unpaired_frechet_distance(feats, ref_feats, groups)
            if math.isfinite(unpaired):  # needs two cross-seed pairs; JSON has no NaN
                m["fd_teacher_unpaired"] = round(unpaired, 4)
            diversity = mean_pairwise_distance(feats, groups)
            if math.isfinite(diversity):  # needs a prompt with 2+ seeds; JSON has no NaN
                m["diversity"] = round(diversity, 4)
    for name, img in images.items():
        if name != reference_name:
            scores[name]["psnr"] = round(float(psnr(img, reference).clamp(max=100).mean()), 4)
            scores[name]["ssim"] = round(float(ssim(img, reference).mean()), 4)
    for name, values in real_metric_scores(real_metrics, reference, images, prompts,
                                           groups, log).items():
        scores[name].update(values)
    return scores


