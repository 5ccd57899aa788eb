"""Discriminator: the frozen teacher transformer as feature extractor (as in latent
adversarial diffusion distillation), small trainable heads on the image tokens of a few of its
blocks, conditioned on the prompt by a projection term. The backbone is a frozen copy of the
teacher, or, for ``decoupled_lora``, the student's own base with its adapters disabled.
:class:`BackboneFeatures` is that feature pass alone: the perceptual term uses it without the
heads.

``D(x0, caption) = sum_l mean_tokens [ w_l . h + <P_l h, C_l c> ]`` where ``h = MLP_l(f_l)``
are the head features of block ``l``'s image tokens ``f_l`` ``(B, N, dim)``, computed on
``x_sigma = (1 - sigma) x0 + sigma eps`` at a random ``sigma``, and ``c`` ``(B, D_cap)`` is the
mean of the caption features. Returns logits ``(B,)``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.flow import noised, transformer_velocity
from pipeline.student.model import _as_dtype


class _Stop(Exception):
    """Raised by the last hook: later blocks are not needed."""


def resolve_layers(layers: list[int], n: int) -> list[int]:
    """Block indices (negative from the end) -> sorted distinct indices in 0..n-1."""
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"discriminator layers {bad} outside 0..{n - 1} (or -{n}..-1): the "
                         f"teacher has {n} main blocks")
    return sorted({i % n for i in layers})


class Head(nn.Module):
    def __init__(self, dim: int, caption_dim: int, hidden: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, 1)
        self.caption = nn.Linear(caption_dim, hidden)

    def forward(self, tokens: torch.Tensor, caption: torch.Tensor) -> torch.Tensor:
        h = self.features(tokens)  # (B, N, hidden)
        logits = self.out(h).squeeze(-1) + (h * self.caption(caption)[:, None]).sum(-1)
        return logits.mean(dim=1)


def frozen_copy(transformer: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen copy of the teacher as backbone (bf16 on GPUs is fine: it is never updated)."""
    return _as_dtype(copy.deepcopy(transformer), dtype).eval().requires_grad_(False)


class BackboneFeatures:
    """Image-token hidden states ``(B, N, dim)`` of a few blocks of a frozen transformer: what
    the discriminator's heads read and what the perceptual term compares. Not a module: the
    backbone is frozen, never trained and never saved with anything that uses it."""

    def __init__(self, backbone: nn.Module, layers: list[int],
                 backbone_context: Callable[[], Any] = contextlib.nullcontext,
                 stop_early: bool = True) -> None:
        """``backbone``: a frozen transformer (see :func:`frozen_copy`), used inside
        ``backbone_context()`` (the LoRA student's ``base_only``). ``stop_early``: skip the
        blocks after the last feature layer (off under FSDP2, whose hooks expect whole
        forwards)."""
        self.backbone = backbone
        self.layers = resolve_layers(layers, len(backbone.layers))
        self.backbone_context = backbone_context
        self.stop_early = stop_early

    @property
    def dim(self) -> int:
        return self.backbone.config.dim

    @property
    def caption_dim(self) -> int:
        return self.backbone.config.cap_feat_dim

    def to(self, *args, **kwargs) -> BackboneFeatures:
        self.backbone = self.backbone.to(*args, **kwargs)
        return self

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor,
                 captions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Hidden states of the selected blocks' image tokens at ``x`` (noisy latents at
        ``sigma`` ``(B,)``), one ``(B, N, dim)`` per block (differentiable with respect to
        ``x``)."""
        patch = self.backbone.config.all_patch_size[0]
        n_tokens = (x.shape[-2] // patch) * (x.shape[-1] // patch)
        captured: dict[int, torch.Tensor] = {}
        last = self.layers[-1]

        def hook(index: int):
            def grab(_module, _inputs, output):
                # Basic (non-omni) mode: the unified sequence is [image tokens, caption tokens].
                captured[index] = output[:, :n_tokens]
                if index == last and self.stop_early:
                    raise _Stop
            return grab

        handles = [self.backbone.layers[i].register_forward_hook(hook(i)) for i in self.layers]
        try:
            with self.backbone_context():
                transformer_velocity(self.backbone, x, sigma, captions)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [captured[i] for i in self.layers]


class Discriminator(nn.Module):
    def __init__(self, backbone: nn.Module, layers: list[int], hidden: int,
                 backbone_context: Callable[[], Any] = contextlib.nullcontext,
                 stop_early: bool = True) -> None:
        """A head of width ``hidden`` on each of ``layers`` of ``backbone`` (the arguments of
        :class:`BackboneFeatures`, kept as :attr:`backbone_features`)."""
        super().__init__()
        # Kept out of parameters(): frozen, not trained, not saved with the heads.
        self.__dict__["backbone_features"] = BackboneFeatures(backbone, layers, backbone_context,
                                                              stop_early)
        tap = self.backbone_features
        self.layers = tap.layers
        self.heads = nn.ModuleList(Head(tap.dim, tap.caption_dim, hidden) for _ in self.layers)

    @property
    def backbone(self) -> nn.Module:
        return self.backbone_features.backbone

    def to(self, *args, **kwargs):  # the backbone is not a submodule: move it too
        self.backbone_features.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def head_logits(self, feats: list[torch.Tensor], captions: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B,)`` from the selected blocks' features (see :class:`BackboneFeatures`)
        and the captions."""
        caption = torch.stack([c.float().mean(0) for c in captions]).to(feats[0].device)
        return sum(head(f.float(), caption) for head, f in zip(self.heads, feats, strict=True))

    def forward(self, x0: torch.Tensor, captions: list[torch.Tensor], sigma: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for clean samples ``x0`` re-noised to ``sigma`` with ``noise``."""
        return self.head_logits(self.backbone_features(noised(x0, noise, sigma), sigma,
                                                       captions), captions)


def feature_distance(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """The perceptual term: mean squared difference of layer-normalized backbone features
    ``(B, N, dim)`` per selected block (normalized per token, as LPIPS normalizes channels, so
    that blocks of different scale weigh alike), averaged over blocks; a scalar."""
    terms = [(F.layer_norm(f.float(), f.shape[-1:]) - F.layer_norm(r.float(), r.shape[-1:]))
             .pow(2).mean() for f, r in zip(fake, real, strict=True)]
    return torch.stack(terms).mean()
