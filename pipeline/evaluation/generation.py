"""Generating the evaluation images and timing each generator, in the teacher's space.

A :data:`Sampler` maps captions and noise ``(B, C, H, W)`` (sigma 1) to final latents; the
teacher's adapter decodes them, so every generator's images go through the same decoder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import ArtifactError
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


@dataclass(frozen=True)
class Generator:
    """One row of the evaluation: its sampling steps and a loader of its sampler (a student
    loads when asked, so only one is in memory at a time)."""

    steps: int
    load: Callable[[], Sampler]


def generators(teacher: TeacherAdapter, steps: int, students: dict[str, Path],
               weights: str) -> dict[str, Generator]:
    """The teacher at ``steps`` (``teacher_<steps>``, the reference), the teacher naively at
    2 steps (``teacher_2``), and each finished training stage folder of ``students`` at 2."""
    from pipeline.student.load import load_student
    from schemas.manifest import StudentCheckpointManifest

    out = {f"teacher_{steps}": Generator(steps, lambda: lambda c, n: teacher.sample(
               c, n, steps).final),
           "teacher_2": Generator(2, lambda: lambda c, n: teacher.sample(c, n, 2).final)}
    for name, folder in students.items():
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise ArtifactError(f"evaluate.extra_students.{name}: {folder} is not a finished "
                                f"training stage (no manifest.json)")
        manifest = StudentCheckpointManifest.model_validate_json(manifest_path.read_text())

        def loader(folder=folder, manifest=manifest) -> Sampler:
            student = load_student(folder, manifest, teacher, weights)
            return lambda c, n: student.sample(n.to(teacher.device), c)

        out[name] = Generator(2, loader)
    return out


@dataclass
class Generated:
    images: dict[str, torch.Tensor]
    latencies: dict[str, dict[str, float]]
    timings: dict[str, float]


def generate_all(gens: dict[str, Generator], teacher: TeacherAdapter, batch: dict[str, Any],
                 reference: str, *, batch_size: int, latency_batch: int, latency_repeats: int,
                 log: logging.Logger,
                 progress: Callable[[float], None] = lambda f: None) -> Generated:
    """Every generator's images of the collated eval ``batch`` (the reference's decoded from
    the shards' final latents ``x0``, which it made), its latency and the timings."""
    prompts, noise = batch["prompt"], batch["noise"]
    out = Generated({}, {}, {})
    k = min(latency_batch, len(prompts))
    for name, gen in gens.items():
        start = time.perf_counter()
        sampler = gen.load()
        out.images[name] = generate_images(
            (lambda c, n: n) if name == reference else sampler, teacher, batch["caption"],
            batch["x0"] if name == reference else noise, batch_size)
        out.timings[f"generate_{name}_s"] = round(time.perf_counter() - start, 3)
        out.latencies[name] = measure_latency(sampler, teacher, prompts[:k], noise[:k],
                                              latency_repeats)
        del sampler  # a student's weights go before the next one loads
        progress(len(out.images) / len(gens))
        log.info("evaluate: generated %d images with %s", len(prompts), name)
    return out
