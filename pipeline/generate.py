"""Image generation with any teacher adapter: fixed per-image seeds, batched sampling,
PNG files, a ``prompts.jsonl`` index and a contact sheet."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.teachers.base import TeacherAdapter


def noise_for_seeds(seeds: list[int], shape: tuple[int, int, int]) -> torch.Tensor:
    """``(len(seeds), *shape)`` standard normal noise, image ``i`` from ``seeds[i]`` alone, so
    an image's noise does not depend on the batch it is sampled in. (Padding inside the text
    encoder and transformer still depends on the batch's longest prompt; outputs may differ
    by float rounding across batch sizes, about one uint8 level in rare pixels.)"""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s))
                        for s in seeds])


def generate(
    teacher: TeacherAdapter,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    height: int,
    width: int,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1]. Prompts are encoded batch by batch (a large text
    encoder keeps every layer's hidden states for the whole call)."""
    shape = teacher.latent_shape(height, width)
    out = []
    for start in range(0, len(prompts), batch_size):
        end = start + batch_size
        captions = teacher.encode_prompts(prompts[start:end])
        noise = noise_for_seeds(seeds[start:end], shape)
        final = teacher.sample(captions, noise, steps).final
        out.append(teacher.decode(final).cpu())
        if progress:
            progress(min(end, len(prompts)) - start)
    return torch.cat(out)


def generate_with_pipeline(
    pipe,
    prompts: list[str],
    seeds: list[int],
    height: int | None,
    width: int | None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1] from a 2-step pipeline (an export, or a student in
    memory), image ``i`` from ``torch.Generator().manual_seed(seeds[i])``: the same image as
    ``pipe(prompts[i], generator=torch.Generator().manual_seed(seeds[i]))``."""
    out = []
    for start in range(0, len(prompts), batch_size):
        end = min(start + batch_size, len(prompts))
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:end]]
        images = pipe(prompts[start:end], height=height, width=width, generator=generators,
                      output_type="pt").images
        out.append(images.float().cpu())
        if progress:
            progress(end - start)
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, H, W, 3)`` uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def contact_sheet(images: np.ndarray, columns: int = 8, scale: int = 1) -> Image.Image:
    """A grid of ``(N, H, W, 3)`` uint8 images, 2 px gaps, optionally upscaled."""
    n, h, w, _ = images.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    sheet = Image.new("RGB", (columns * (w + 2) + 2, rows * (h + 2) + 2), (40, 40, 40))
    for i, img in enumerate(images):
        sheet.paste(Image.fromarray(img), (2 + (i % columns) * (w + 2),
                                           2 + (i // columns) * (h + 2)))
    if scale > 1:
        sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.NEAREST)
    return sheet


def write_outputs(out: Path, images: torch.Tensor, prompts: list[str], seeds: list[int],
                  meta: dict[str, object]) -> None:
    """``{i:05d}.png`` per image, ``prompts.jsonl`` (file, prompt, seed, and ``meta``) and
    ``contact_sheet.png``. The index is written last. When ``out`` holds an earlier run (it has
    a ``prompts.jsonl``), that index is removed first and numbered PNGs beyond this run's count
    are deleted, so no image outlives the index that names it."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "prompts.jsonl").exists():
        (out / "prompts.jsonl").unlink()
        for stale in out.glob("[0-9][0-9][0-9][0-9][0-9].png"):
            if int(stale.stem) >= len(prompts):
                stale.unlink()
    arrays = to_uint8(images)
    records = []
    for i, (img, prompt, seed) in enumerate(zip(arrays, prompts, seeds, strict=True)):
        name = f"{i:05d}.png"
        Image.fromarray(img).save(out / name)
        records.append({"file": name, "prompt": prompt, "seed": seed, **meta})
    scale = max(1, 128 // arrays.shape[1])
    contact_sheet(arrays, scale=scale).save(out / "contact_sheet.png")
    tmp = out / "prompts.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out / "prompts.jsonl")
