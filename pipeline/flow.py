"""Flow matching, once for the whole project: noising, the transformer call, Euler sampling,
the EMA update (the shifted schedule and the on-the-grid check: :mod:`pipeline.schedule`).

Convention (everywhere in twostep): ``x_sigma = (1 - sigma) x0 + sigma eps``, velocity
``v = eps - x0``, Euler step ``x_b = x_a + (sigma_b - sigma_a) v``. A Z-Image transformer (the
toy teacher or Z-Image Turbo) takes ``t = 1 - sigma`` and returns ``x0 - eps = -v``; its
output is read here, and (necessarily, as it may import nothing from twostep) in the exported
pipeline's code file ``pipeline/export/pipeline_twostep.py``, which a test holds to this one.
Tensors: ``x`` ``(B, C, H, W)``, ``sigma`` ``(B,)``,
captions a list of ``(L_i, D)`` (no padding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.schedule import sigma_index

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x (B, C, H, W), sigma (B,)) -> v (B, C, H, W)``: captions and model already bound."""


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) x0 + sigma noise`` with ``sigma`` ``(B,)``."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The transformer's ``t = 1 - sigma``, computed as ``ZImagePipeline`` passes it:
    ``(1000 - 1000 sigma) / 1000`` in float32 (also when the model runs in bf16)."""
    return (1000 - sigma.to(torch.float32) * 1000) / 1000


def transformer_output(model: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                       captions: list[torch.Tensor]) -> torch.Tensor:
    """The raw output ``(B, C, H, W)`` (float32) of a ``ZImageTransformer2DModel`` (or a
    DDP-wrapped one) at ``x`` and ``sigma``: ``x0 - eps`` for a velocity-trained model. The
    input is cast to the model's dtype and the model runs at its own patch size."""
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    dtype = next(inner.parameters()).dtype
    t = timestep(sigma.to(x.device))
    out = model(list(x.to(dtype).unsqueeze(2).unbind(0)), t, [c.to(dtype) for c in captions],
                patch_size=inner.config.all_patch_size[0], return_dict=False)[0]
    return torch.stack([o.float() for o in out]).squeeze(2)


def transformer_velocity(model: nn.Module, x: torch.Tensor, sigma: torch.Tensor,
                         captions: list[torch.Tensor]) -> torch.Tensor:
    """``v = eps - x0`` predicted at ``x`` ``(B, C, H, W)`` and ``sigma`` ``(B,)`` (float32)."""
    return -transformer_output(model, x, sigma, captions)


@dataclass
class Trajectory:
    """``final``: ``(B, C, H, W)`` at the last sigma; ``recorded``: the state at each requested
    sigma of the schedule (e.g. the student's step boundary ``sigma_mid = 0.75``)."""

    final: torch.Tensor
    recorded: dict[float, torch.Tensor] = field(default_factory=dict)


def euler(velocity: VelocityFn, x: torch.Tensor, sigmas: Sequence[float],
          record: Sequence[float] = ()) -> Trajectory:
    """Euler integration of ``velocity`` from ``x`` at ``sigmas[0]`` over ``sigmas``
    (``x_b = x_a + (b - a) v(x_a, a)``, float32 state). Every sigma in ``record`` must lie on
    ``sigmas`` (:func:`sigma_index`); the state there is returned too."""
    wanted = {s: sigma_index(s, sigmas) for s in record}
    recorded: dict[float, torch.Tensor] = {}
    x = x.to(torch.float32)
    for i, (a, b) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        for s, index in wanted.items():
            if index == i:
                recorded[s] = x.clone()
        v = velocity(x, torch.full((x.shape[0],), a, device=x.device))
        x = x + (b - a) * v.float()
    for s, index in wanted.items():
        if index == len(sigmas) - 1:
            recorded[s] = x.clone()
    return Trajectory(final=x, recorded=recorded)


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at ``step`` (0-based), warmed up as ``min(decay, (1 + step) / (10 +
    step))`` so that short runs are not dominated by the initial weights."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float,
               step: int) -> None:
    """``ema <- ema + (1 - d) (param - ema)`` pairwise (same order and shapes; sharded
    DTensors work too), ``d = ema_decay(decay, step)``."""
    d = ema_decay(decay, step)
    for pe, pm in zip(ema, params, strict=True):
        pe.lerp_(pm.detach(), 1 - d)
