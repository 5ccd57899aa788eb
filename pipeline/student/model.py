"""The two-step student.

``x_mid = eps + (sigma_mid - 1) v1``, ``v1 = G1(eps, sigma = 1)``;
``x0 = x_mid - sigma_mid v2``, ``v2 = G2(x_mid, sigma = sigma_mid)``: two Euler steps of the
teacher's schedule, each by its own copy of the teacher (``decoupled``) or one shared copy.
Tensors: ``eps``, ``x_mid``, ``x0`` are ``(B, C, H, W)``; captions a list of ``(L_i, D)``.
"""

from __future__ import annotations

import copy

import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.flow import transformer_velocity


def _as_dtype(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast only when needed (diffusers warns on every ``.to(dtype)``)."""
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


class TwoStepStudent(nn.Module):
    def __init__(self, g1: ZImageTransformer2DModel, g2: ZImageTransformer2DModel | None,
                 sigma_mid: float) -> None:
        super().__init__()
        if not 0.0 < sigma_mid < 1.0:
            raise ValueError(f"sigma_mid must be in (0, 1), got {sigma_mid}")
        self.g1 = g1
        self.g2 = g2  # None: shared parameterization, g1 serves both steps
        self.sigma_mid = sigma_mid

    @classmethod
    def from_teacher(cls, transformer: nn.Module, parameterization: str, sigma_mid: float,
                     dtype: torch.dtype = torch.float32) -> TwoStepStudent:
        """Both steps start from the teacher's weights (copies in ``dtype``: float32 master
        weights for training; bf16 only for memory probes or inference)."""
        g1 = _as_dtype(copy.deepcopy(transformer), dtype).train().requires_grad_(True)
        g2 = copy.deepcopy(g1) if parameterization == "decoupled" else None
        return cls(g1, g2, sigma_mid)

    @property
    def parameterization(self) -> str:
        return "shared" if self.g2 is None else "decoupled"

    def generators(self) -> dict[str, ZImageTransformer2DModel]:
        """Weight-file prefixes -> modules (``g`` when shared)."""
        return {"g": self.g1} if self.g2 is None else {"g1": self.g1, "g2": self.g2}

    def step1(self, noise: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
        sigma = torch.ones(noise.shape[0], device=noise.device)
        return noise + (self.sigma_mid - 1.0) * transformer_velocity(self.g1, noise, sigma,
                                                                     captions)

    def step2(self, x_mid: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
        sigma = torch.full((x_mid.shape[0],), self.sigma_mid, device=x_mid.device)
        g2 = self.g1 if self.g2 is None else self.g2
        return x_mid - self.sigma_mid * transformer_velocity(g2, x_mid, sigma, captions)

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
