"""The two-step student.

``x_mid = eps + (sigma_mid - 1) v1``, ``v1 = G1(eps, sigma = 1)``;
``x0 = x_mid - sigma_mid v2``, ``v2 = G2(x_mid, sigma = sigma_mid)``: two Euler steps of the
teacher's schedule. Parameterizations:

- ``decoupled``: G1 and G2 are two copies of the teacher transformer;
- ``shared``: one copy serves both steps;
- ``decoupled_lora``: one frozen copy with a LoRA adapter per step
  (:mod:`pipeline.student.lora`); only the adapters train.

Tensors: ``eps``, ``x_mid``, ``x0`` are ``(B, C, H, W)``; captions a list of ``(L_i, D)``.

Weight files (``student.safetensors``, ``ema.safetensors``) hold the trainable tensors keyed by
:meth:`TwoStepStudent.file_key`: ``g1.*``/``g2.*`` (decoupled), ``g.*`` (shared), or the
adapter weights ``g1.<module>.lora_{A,B}.step{1,2}.weight`` (decoupled_lora).
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Literal

import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.flow import transformer_velocity
from pipeline.student.lora import ADAPTERS, BASE, StepAdapters, merged_copy

if TYPE_CHECKING:
    from schemas.config import LoraConfig

Parameterization = Literal["decoupled", "shared", "decoupled_lora"]


def _as_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast only when needed (diffusers warns on every ``.to(dtype)``)."""
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


class TwoStepStudent(nn.Module):
    def __init__(self, g1: ZImageTransformer2DModel, g2: ZImageTransformer2DModel | None,
                 sigma_mid: float, adapters: StepAdapters | None = None) -> None:
        super().__init__()
        if not 0.0 < sigma_mid < 1.0:
            raise ValueError(f"sigma_mid must be in (0, 1), got {sigma_mid}")
        self.g1 = g1
        self.g2 = g2  # None: shared (g1 serves both steps) or decoupled_lora (g1 is the base)
        self.sigma_mid = sigma_mid
        self.adapters = adapters
        self.merged_from: Parameterization | None = None  # set by merged()

    @classmethod
    def from_teacher(cls, transformer: nn.Module, parameterization: Parameterization,
                     sigma_mid: float, dtype: torch.dtype = torch.float32,
                     lora: LoraConfig | None = None, take: bool = False) -> TwoStepStudent:
        """Both steps start from the teacher's weights, in ``dtype`` (float32 master weights
        for training; bf16 for inference). ``take``: G1 (or the LoRA base) is ``transformer``
        itself, not a copy, so that a training worker holds no teacher it does not use."""
        g1 = transformer if take else copy.deepcopy(transformer)
        g1 = _as_dtype(g1, dtype)
        if parameterization == "decoupled_lora":
            if lora is None:
                raise ValueError("decoupled_lora needs a LoraConfig")
            adapters = StepAdapters(g1.train(), lora)
            return cls(g1, None, sigma_mid, adapters)
        g1.train().requires_grad_(True)
        g2 = copy.deepcopy(g1) if parameterization == "decoupled" else None
        return cls(g1, g2, sigma_mid)

    @property
    def parameterization(self) -> Parameterization:
        if self.adapters is not None or self.merged_from is not None:
            return "decoupled_lora"
        return "shared" if self.g2 is None else "decoupled"

    def transformers(self) -> list[nn.Module]:
        """The distinct transformer modules (what FSDP2 shards)."""
        return [self.g1] if self.g2 is None else [self.g1, self.g2]

    def file_key(self, name: str) -> str:
        """State-dict name -> weight-file key (``g1.`` becomes ``g.`` when shared)."""
        return re.sub(r"^g1\.", "g.", name) if self.g2 is None and self.adapters is None \
            else name

    def trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def _velocity(self, step: int, x: torch.Tensor, sigma: torch.Tensor,
                  captions: list[torch.Tensor]) -> torch.Tensor:
        if self.adapters is not None:
            with self.adapters.use(ADAPTERS[step - 1]) as base:
                return transformer_velocity(base, x, sigma, captions)
        g = self.g1 if step == 1 or self.g2 is None else self.g2
        return transformer_velocity(g, x, sigma, captions)

    def base_only(self):
        """Context in which ``g1`` is the frozen teacher (decoupled_lora only)."""
        assert self.adapters is not None
        return self.adapters.use(BASE)

    def enable_gradient_checkpointing(self) -> None:
        for g in self.transformers():
            if self.adapters is None:
                g.enable_gradient_checkpointing()
            else:
                g.enable_gradient_checkpointing(self.adapters.checkpoint_function())

    def step1(self, noise: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
        sigma = torch.ones(noise.shape[0], device=noise.device)
        return noise + (self.sigma_mid - 1.0) * self._velocity(1, noise, sigma, captions)

    def step2(self, x_mid: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
        sigma = torch.full((x_mid.shape[0],), self.sigma_mid, device=x_mid.device)
        return x_mid - self.sigma_mid * self._velocity(2, x_mid, sigma, captions)

    def forward(self, noise: torch.Tensor, captions: list[torch.Tensor],
                x_mid_in: torch.Tensor | None = None,
                detach_mid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_mid, x0)``. Step 2 starts from ``x_mid_in`` when given (phase 1: the
        teacher's latent), else from step 1's output, detached when ``detach_mid``."""
        x_mid = self.step1(noise, captions)
        start = x_mid_in if x_mid_in is not None else (x_mid.detach() if detach_mid else x_mid)
        return x_mid, self.step2(start, captions)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
        """Two steps from ``noise`` (sigma 1) to ``x0``."""
        return self(noise, captions)[1]

    def merged(self) -> TwoStepStudent:
        """A decoupled student of two plain transformers, the adapters fused in (itself when
        it has no adapters): what evaluation scores and an export ships."""
        if self.adapters is None:
            return self
        merged = TwoStepStudent(merged_copy(self.adapters, ADAPTERS[0]),
                                merged_copy(self.adapters, ADAPTERS[1]), self.sigma_mid)
        merged.merged_from = "decoupled_lora"
        return merged
