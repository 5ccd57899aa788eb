"""The toy feature network: a small CNN that reads the five attributes off a 32x32 image.

Trained on ground-truth renders (:mod:`pipeline.toy.render`), it scores generated images
(per-attribute accuracy against what the prompt names) and its penultimate features define the
toy Frechet distance. Weights ship as safetensors in ``pipeline/toy/assets/feature_net/``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import ArtifactError
from pipeline.toy.paths import FEATURES_DIR
from pipeline.toy.prompts import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, ToyAttributes
from pipeline.toy.render import render, sample_scene

ASSET_DIR = FEATURES_DIR
HEADS: dict[str, tuple] = {
    "size": SIZES,
    "color": tuple(COLORS),
    "shape": SHAPES,
    "position": tuple(range(len(POSITIONS))),
    "background": tuple(BACKGROUNDS),
}
FEATURE_DIM = 128


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, 32, 32, 3)`` uint8 -> ``(N, 3, 32, 32)`` float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class ToyFeatureNet(nn.Module):
    """``(N, 3, 32, 32)`` in [-1, 1] -> features ``(N, 128)`` and one logit vector per head."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                 nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(
            block(3, width), nn.MaxPool2d(2),  # 16x16
            block(width, 2 * width), nn.MaxPool2d(2),  # 8x8
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(4),  # 4x4
            nn.Flatten(), nn.Linear(4 * width * 16, FEATURE_DIM), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(values))
                                    for name, values in HEADS.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.body(x)
        return features, {name: head(features) for name, head in self.heads.items()}

    @torch.inference_mode()
    def predict(self, images: torch.Tensor) -> list[ToyAttributes]:
        """Attributes read off each image (``(N, 3, 32, 32)`` in [-1, 1])."""
        self.eval()
        _, logits = self(images)
        idx = {name: logit.argmax(dim=1).tolist() for name, logit in logits.items()}
        return [ToyAttributes(**{name: HEADS[name][idx[name][i]] for name in HEADS})
                for i in range(images.shape[0])]


@dataclass
class RenderSet:
    images: torch.Tensor  # (N, 3, 32, 32) in [-1, 1]
    labels: dict[str, torch.Tensor]  # head -> (N,) class index


def render_set(n: int, seed: int) -> RenderSet:
    """``n`` ground-truth renders with every attribute drawn uniformly."""
    rng = random.Random(seed)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    labels: dict[str, list[int]] = {name: [] for name in HEADS}
    for i in range(n):
        scene = sample_scene(ToyAttributes(), rng.getrandbits(63))
        images[i] = render(scene)
        for name, values in HEADS.items():
            labels[name].append(values.index(getattr(scene, name)))
    return RenderSet(to_tensor(images), {k: torch.tensor(v) for k, v in labels.items()})


def degrade(images: torch.Tensor, blur: torch.Tensor, noise: torch.Tensor,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Imperfections generated images have: a Gaussian blur of std ``blur[i]`` px (0: none)
    and additive Gaussian noise of std ``noise[i]`` (in [-1, 1] units), per image.

    ``images``: ``(N, 3, 32, 32)`` in [-1, 1]; ``blur``, ``noise``: ``(N,)`` -> same shape,
    clamped to [-1, 1]."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    std = blur.clamp(min=1e-3).view(-1, 1)
    kernel = torch.exp(-offsets.pow(2) / (2 * std.pow(2)))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, 7); blur 0 gives a delta
    n, c, h, w = images.shape
    x = images.reshape(1, n * c, h, w)
    rows = kernel.repeat_interleave(c, dim=0).view(n * c, 1, 1, -1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), rows, groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"),
                 rows.transpose(2, 3), groups=n * c)
    x = x.view(n, c, h, w)
    x = x + noise.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x.clamp(-1.0, 1.0)


def random_degrade(images: torch.Tensor, generator: torch.Generator,
                   max_blur: float = 1.2, max_noise: float = 0.15) -> torch.Tensor:
    """Training augmentation: half the images blurred (std U[0, max_blur] px), half with noise
    (std U[0, max_noise]), independently."""
    n = images.shape[0]
    blur = torch.rand(n, generator=generator) * max_blur
    blur = torch.where(torch.rand(n, generator=generator) < 0.5, blur, torch.zeros(n))
    noise = torch.rand(n, generator=generator) * max_noise
    noise = torch.where(torch.rand(n, generator=generator) < 0.5, noise, torch.zeros(n))
    return degrade(images, blur, noise, generator)


def accuracy(model: ToyFeatureNet, data: RenderSet, batch: int = 512) -> dict[str, float]:
    model.eval()
    correct = {name: 0 for name in HEADS}
    with torch.inference_mode():
        for start in range(0, len(data.images), batch):
            _, logits = model(data.images[start : start + batch])
            for name in HEADS:
                pred = logits[name].argmax(dim=1)
                correct[name] += int((pred == data.labels[name][start : start + batch]).sum())
    return {name: c / len(data.images) for name, c in correct.items()}


def degraded_set(data: RenderSet, blur: float, noise: float, seed: int) -> RenderSet:
    """``data`` with every image blurred by ``blur`` px and noised by ``noise``."""
    n = len(data.images)
    images = degrade(data.images, torch.full((n,), blur), torch.full((n,), noise),
                     torch.Generator().manual_seed(seed))
    return RenderSet(images, data.labels)


# Held-out robustness checks recorded with the weights: (name, blur px, noise std).
ROBUSTNESS = (("blur_1px", 1.0, 0.0), ("noise_0.1", 0.0, 0.1))


def train_feature_net(
    train_size: int = 40_000, test_size: int = 5_000, epochs: int = 4, seed: int = 0,
    log=print, augment: bool = True,
) -> tuple[ToyFeatureNet, dict[str, object]]:
    """Train on fresh renders (degraded at random when ``augment``, so that the soft edges and
    residual noise of generated images do not flip a prediction: without it, a 1-px blur
    drops shape accuracy to chance); report held-out per-attribute accuracy on clean renders
    and on degraded ones."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    train, test = render_set(train_size, seed), render_set(test_size, seed + 1)
    model = ToyFeatureNet()
    steps = epochs * ((train_size + 127) // 128)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(train_size, generator=gen)
        for b in range(0, train_size, 128):
            idx = order[b : b + 128]
            images = train.images[idx]
            if augment:
                images = random_degrade(images, gen)
            _, logits = model(images)
            loss = sum(loss_fn(logits[k], train.labels[k][idx]) for k in HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f} "
            f"held-out {accuracy(model, test)}")
    acc = accuracy(model, test)
    robustness = {name: accuracy(model, degraded_set(test, blur, noise, seed + 2))
                  for name, blur, noise in ROBUSTNESS}
    info = {"train_renders": train_size, "test_renders": test_size, "epochs": epochs,
            "seed": seed, "augment": augment, "held_out_accuracy": acc,
            "min_accuracy": min(acc.values()), "held_out_degraded_accuracy": robustness,
            "train_seconds": round(time.perf_counter() - start, 1),
            "torch": torch.__version__}
    return model, info


def save_feature_net(model: ToyFeatureNet, info: dict[str, object], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              folder / "model.safetensors")
    (folder / "build.json").write_text(json.dumps(info, indent=2) + "\n")


def load_feature_net(folder: Path = ASSET_DIR) -> ToyFeatureNet:
    """Load the shipped (or a rebuilt) feature network; a clear error when it is missing."""
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ArtifactError(f"{weights}: toy feature network weights not found; build them "
                            f"with `distill toy build-features`")
    model = ToyFeatureNet()
    try:
        model.load_state_dict(load_file(weights))
    except (RuntimeError, OSError) as exc:
        raise ArtifactError(f"{weights}: not a toy feature network checkpoint: {exc}") from None
    return model.eval()
