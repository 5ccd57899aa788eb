"""The EMA of the student: shadow copies of its trainable parameters only (the LoRA adapters
for ``decoupled_lora``), made after parallelization so that under FSDP2 each rank keeps the
EMA of its own shards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pipeline.flow import ema_update


class ParamEMA:
    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.shadow = {n: p.detach().clone() for n, p in params.items()}

    def update(self, decay: float, step: int) -> None:
        ema_update(self.shadow.values(), self.params.values(), decay, step)

    @torch.no_grad()
    def copy_from_params(self) -> None:
        """Shadows <- current parameters (after the parameters were loaded with EMA values)."""
        for name, p in self.params.items():
            self.shadow[name].copy_(p.detach())

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The parameters hold the EMA values inside the block, their own values after."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name])
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(saved[name])
