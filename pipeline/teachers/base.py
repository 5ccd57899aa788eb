"""The teacher interface, in the project's flow-matching convention.

``x_sigma = (1 - sigma) * x0 + sigma * eps``; velocity ``v = eps - x0``; Euler step
``x_b = x_a + (sigma_b - sigma_a) * v``. ``x`` lives in the teacher's sampling space (pixels for
the toy, VAE latents for Z-Image): shape ``(B, C, H, W)``. Adapters convert from each model's
native output (the Z-Image transformer takes ``t = 1 - sigma`` and returns ``x0 - eps``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SampleResult:
    """``final``: ``(B, C, H, W)`` at sigma 0; ``recorded``: the latent at each requested sigma
    of the schedule (the student's step boundaries, e.g. ``sigma_mid = 0.75``)."""

    final: torch.Tensor
    recorded: dict[float, torch.Tensor] = field(default_factory=dict)


class TeacherAdapter(abc.ABC):
    """A text-to-image flow-matching teacher, seen through the project's conventions."""

    name: str
    device: torch.device

    @abc.abstractmethod
    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        """Caption features, one ``(L_i, D)`` tensor per prompt (no padding)."""

    @abc.abstractmethod
    def velocity(self, x: torch.Tensor, sigma: torch.Tensor,
                 captions: list[torch.Tensor]) -> torch.Tensor:
        """``v = eps - x0`` predicted at ``x`` ``(B, C, H, W)`` and ``sigma`` ``(B,)``."""

    @abc.abstractmethod
    def schedule(self, steps: int, latent_shape: tuple[int, int, int]) -> list[float]:
        """``steps + 1`` sigmas from 1 down to 0 used by ``steps``-step sampling."""

    @abc.abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, H, W)`` of the sampling space for an image of ``height x width`` pixels."""

    @abc.abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling space -> images ``(B, 3, H, W)`` in [0, 1]."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] -> sampling space."""

    @property
    @abc.abstractmethod
    def transformer(self) -> nn.Module:
        """The denoiser, for students to copy."""

    @torch.inference_mode()
    def sample(self, captions: list[torch.Tensor], noise: torch.Tensor, steps: int,
               record_sigmas: tuple[float, ...] = ()) -> SampleResult:
        """Euler sampling from ``noise`` (sigma = 1) over :meth:`schedule`. Every sigma in
        ``record_sigmas`` must lie on the schedule; the latent there is returned too."""
        sigmas = self.schedule(steps, tuple(noise.shape[1:]))
        recorded: dict[float, torch.Tensor] = {}
        wanted = {s: _on_grid(s, sigmas) for s in record_sigmas}
        x = noise.to(self.device, torch.float32)
        for i, (a, b) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
            for s, index in wanted.items():
                if index == i:
                    recorded[s] = x.clone()
            v = self.velocity(x, torch.full((x.shape[0],), a, device=x.device), captions)
            x = x + (b - a) * v.float()
        for s, index in wanted.items():
            if index == len(sigmas) - 1:
                recorded[s] = x.clone()
        return SampleResult(final=x, recorded=recorded)


def find_sigma(sigma: float, sigmas: list[float], tol: float = 1e-3) -> int | None:
    """Index of ``sigma`` on a schedule (within ``tol``), or None."""
    return next((i for i, s in enumerate(sigmas) if abs(s - sigma) <= tol), None)


def _on_grid(sigma: float, sigmas: list[float]) -> int:
    index = find_sigma(sigma, sigmas)
    if index is not None:
        return index
    grid = ", ".join(f"{s:.4f}" for s in sigmas)
    raise ValueError(f"sigma {sigma} is not on the teacher's schedule ({grid})")


def load_teacher(kind: str, path: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None) -> TeacherAdapter:
    """``kind``: ``toy`` (the shipped toy teacher, or the folder ``path``) or ``zimage``
    (a local Z-Image Turbo diffusers folder at ``path``)."""
    if kind == "toy":
        from pipeline.teachers.toy import ToyTeacher

        return ToyTeacher.load(path, device=device)
    if kind == "zimage":
        from pipeline.teachers.zimage import ZImageTeacher

        if path is None:
            raise ValueError("the zimage teacher needs the path of a local diffusers folder")
        return ZImageTeacher.load(path, device=device, dtype=dtype)
    raise ValueError(f"unknown teacher kind {kind!r} (kinds: toy, zimage)")
