"""Flow-matching helpers shared by the student and the discriminator.

Convention: ``x_sigma = (1 - sigma) x0 + sigma eps``, ``v = eps - x0``. A Z-Image transformer
(toy or real) takes ``t = 1 - sigma`` and returns ``x0 - eps = -v``.
"""

from __future__ import annotations

import torch
from diffusers import ZImageTransformer2DModel


def transformer_velocity(model: ZImageTransformer2DModel, x: torch.Tensor, sigma: torch.Tensor,
                         captions: list[torch.Tensor]) -> torch.Tensor:
    """``v`` predicted at ``x`` ``(B, C, H, W)``, ``sigma`` ``(B,)``; captions ``(L_i, D)``.
    ``t`` is computed as ``ZImagePipeline`` does ((1000 - 1000 sigma) / 1000, float32) and the
    model runs at its own patch size; the result is float32."""
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    dtype = next(inner.parameters()).dtype
    t = (1000 - sigma.to(x.device, torch.float32) * 1000) / 1000
    out = model(list(x.to(dtype).unsqueeze(2).unbind(0)), t, [c.to(dtype) for c in captions],
                patch_size=inner.config.all_patch_size[0], return_dict=False)[0]
    return -torch.stack([o.float() for o in out]).squeeze(2)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x0 + sigma noise`` with ``sigma`` ``(B,)``."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise
