"""Generating the evaluation images and timing each generator, in the teacher's space.

A :data:`Sampler` maps captions and noise ``(B, C, H, W)`` (sigma 1) to final latents; the
teacher's adapter decodes them, so every generator's images go through the same decoder.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from pipeline.teachers.base import TeacherAdapter

Sampler = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]
"""``(captions [(L_i, D)], noise (B, C, H, W)) -> final latents (B, C, H, W)``."""


def generate_images(sampler: Sampler, teacher: TeacherAdapter, captions: list[torch.Tensor],
                    noise: torch.Tensor, batch: int) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1] on the CPU, ``batch`` samples at a time."""
    images = []
    with torch.inference_mode():
        for i in range(0, len(captions), batch):
            caps = [c.to(teacher.device) for c in captions[i:i + batch]]
            latents = sampler(caps, noise[i:i + batch].to(teacher.device))
            images.append(teacher.decode(latents).float().cpu())
    return torch.cat(images)


def measure_latency(sampler: Sampler, teacher: TeacherAdapter, prompts: list[str],
                    noise: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per image of text encoding, denoising and decoding of one batch
    (``len(prompts)`` images), over ``repeats`` timed rounds after one warm-up round; plus
    their total and images per second."""
    def sync() -> None:
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()

    parts: dict[str, list[float]] = {"text_encoding": [], "denoising": [], "decoding": []}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            caps = teacher.encode_prompts(prompts)
            sync()
            t1 = time.perf_counter()
            latents = sampler(caps, noise.to(teacher.device))
            sync()
            t2 = time.perf_counter()
            teacher.decode(latents)
            sync()
            t3 = time.perf_counter()
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[key].append(value / len(prompts))
    result = {k: float(np.median(v[1:])) for k, v in parts.items()}
    result["total"] = sum(result.values())
    result["images_per_s"] = 1.0 / result["total"]
    return {k: round(v, 6) for k, v in result.items()}
