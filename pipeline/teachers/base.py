"""The teacher interface, in the project's flow-matching convention.

``x_sigma = (1 - sigma) * x0 + sigma * eps``; velocity ``v = eps - x0``; Euler step
``x_b = x_a + (sigma_b - sigma_a) * v`` (all in :mod:`pipeline.flow`). ``x`` lives in the
teacher's sampling space (the toy autoencoder's latent for the shipped toy teacher, VAE
latents for Z-Image): shape ``(B, C, H, W)``. Adapters convert from each model's native output
through :func:`pipeline.flow.transformer_velocity`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.flow import Trajectory, euler


@dataclass(frozen=True)
class PipelineComponents:
    """What a teacher contributes to an exported pipeline besides the student's transformers:
    diffusers/transformers modules with ``save_pretrained``, and how prompts are encoded
    (``qwen3``: Z-Image's chat-templated Qwen3; ``minilm``: the toy world's MiniLM)."""

    text_encoder: Any
    tokenizer: Any
    vae: Any
    text_encoding: str


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

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling space -> images ``(B, 3, H, W)`` in [0, 1]."""
        return self.decode_differentiable(x).clamp(0, 1)

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in [0, 1] -> sampling space."""

    @abc.abstractmethod
    def decode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling space ``(B, C, h, w)`` -> images ``(B, 3, H, W)`` on the [0, 1] scale,
        differentiable in ``x`` (the decoder itself frozen, no clamp): :meth:`decode` without
        its clamp, and for a loss on decoded images (``train_e2e.pixel_weight``)."""

    @property
    @abc.abstractmethod
    def transformer(self) -> nn.Module:
        """The denoiser, for students to copy."""

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the denoiser's weights: what sampling computes in outside autocast
        (an adapter may hold other weights than it was asked for: the toy teacher stays
        float32)."""
        return next(self.transformer.parameters()).dtype

    @abc.abstractmethod
    def take_transformer(self) -> nn.Module:
        """The denoiser, handed over: the adapter keeps no reference to it (a training worker
        turns it into its student and keeps no teacher transformer it does not use); its
        ``velocity`` and ``sample`` no longer work afterwards."""

    def pipeline_components(self) -> PipelineComponents:
        """The text encoder, tokenizer and decoder an export carries (see
        :mod:`pipeline.export.folder`)."""
        raise NotImplementedError(f"the {self.name} teacher cannot be exported")

    @torch.inference_mode()
    def sample(self, captions: list[torch.Tensor], noise: torch.Tensor, steps: int,
               record_sigmas: tuple[float, ...] = ()) -> Trajectory:
        """Euler sampling from ``noise`` (sigma = 1) over :meth:`schedule`. Every sigma in
        ``record_sigmas`` must lie on the schedule; the latent there is returned too."""
        sigmas = self.schedule(steps, tuple(noise.shape[1:]))
        return euler(lambda x, sigma: self.velocity(x, sigma, captions),
                     noise.to(self.device), sigmas, record=record_sigmas)
