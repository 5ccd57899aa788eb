"""Per-device memory of a training step, from the transformer's shape: what
``benchmarks/memory_plan.py`` prints and checks against measured peaks.

Terms (bytes; ``T`` trainable and ``F`` frozen parameter counts, ``W`` devices):

- ``decoupled``: ``T = 2P`` (G1, G2), phase 2 ``F = P`` (the discriminator's frozen copy);
  ``shared``: ``T = P``, phase 2 ``F = P``; ``decoupled_lora``: ``T = 2L`` (two adapters),
  ``F = P`` (one base, also the discriminator's backbone).
- state per trainable parameter: float32 weight, gradient, AdamW's two moments and the EMA,
  ``4 + 4 + 8 + 4 = 20``; DDP adds its gradient buckets (4) and, under bf16 autocast, the cached
  bf16 weight copies (2); FSDP2 divides the 20 by ``W`` and adds a working set of gathered
  blocks (two blocks in flight, bf16 weights and float32 gradients before the reduce-scatter)
  and the root's unsharded parameters.
- frozen weights: bf16 on GPU (2 bytes), float32 on CPU (4), divided by ``W`` under FSDP2.
- activations per transformer pass, with gradient checkpointing: every block's input
  (``tokens x dim``) plus one block recomputed in backward with its gradients
  (``2 x tokens x (9 dim + 3 ffn)`` elements); without it, every block's internals. Phase 1 holds
  two passes (G1 and G2) for one backward; phase 2's generator step three (G1, G2 and the
  discriminator's backbone), which is the peak of the phase.
- a fixed runtime allowance on GPU (CUDA context, allocator slack): ``RUNTIME_GIB``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GIB = 2**30
RUNTIME_GIB = 1.5
"""CUDA context and caching-allocator slack on a GPU (the order measured on H100/H200)."""


@dataclass(frozen=True)
class TransformerShape:
    """Exact parameter counts (from a meta-device model) and the sizes activations scale with."""

    params: int
    block_params: int  # the largest block
    root_params: int  # embedders and final layer (outside the blocks)
    lora_params: int  # one adapter
    dim: int
    ffn: int
    heads: int
    main_blocks: int
    refiner_blocks: int
    patch: int
    latent_scale: int  # pixels per latent cell (VAE)

    @classmethod
    def of(cls, config: dict, lora=None, latent_scale: int = 8) -> TransformerShape:
        """Count ``ZImageTransformer2DModel(**config)`` on the meta device (no memory), with
        one LoRA adapter of ``lora`` (a :class:`~schemas.config.LoraConfig`)."""
        import torch
        from diffusers import ZImageTransformer2DModel

        from pipeline.student.lora import targeted_linears
        from pipeline.student.parallel import transformer_blocks

        with torch.device("meta"):
            model = ZImageTransformer2DModel(**config)
        blocks = transformer_blocks(model)
        sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
        total = sum(p.numel() for p in model.parameters())
        adapter = 0
        if lora is not None:
            adapter = sum(lora.rank * (m.in_features + m.out_features)
                          for m in targeted_linears(model, lora.target_modules).values())
        layer = model.layers[0]
        return cls(params=total, block_params=max(sizes), root_params=total - sum(sizes),
                   lora_params=adapter, dim=model.config.dim, heads=model.config.n_heads,
                   ffn=layer.feed_forward.w1.out_features, main_blocks=len(model.layers),
                   refiner_blocks=len(model.noise_refiner), patch=model.config.all_patch_size[0],
                   latent_scale=latent_scale)

    def image_tokens(self, pixels: int) -> int:
        return (pixels // self.latent_scale // self.patch) ** 2


def plan(shape: TransformerShape, phase: Literal[1, 2],
         parameterization: Literal["decoupled", "shared", "decoupled_lora"],
         strategy: Literal["ddp", "fsdp2"], devices: int, pixels: int, batch: int = 1,
         caption_tokens: int = 128, gpu: bool = True,
         checkpointing: bool = True) -> dict[str, float]:
    """Per-device GiB by component and ``total`` for one training step (``batch`` samples per
    device). ``gpu=False``: float32 everywhere, no autocast, no runtime allowance (a CPU run)."""
    p, lora = shape.params, parameterization == "decoupled_lora"
    trainable = 2 * shape.lora_params if lora else (p if parameterization == "shared" else 2 * p)
    frozen = p if lora or phase == 2 else 0
    frozen_bytes, act_bytes = (2, 2) if gpu else (4, 4)
    sharded = strategy == "fsdp2" and devices > 1
    per_state = 20 / devices if sharded else 20 + (4 if devices > 1 else 0) + (2 if gpu else 0)
    out = {"trainable_state": trainable * per_state,
           "frozen_weights": frozen * frozen_bytes / (devices if sharded else 1)}
    if sharded:
        gathered = 2 * shape.block_params * (frozen_bytes + 4) + shape.root_params * 6
        out["fsdp_working_set"] = gathered
    img, cap = shape.image_tokens(pixels), caption_tokens
    tokens = img + cap
    d, h = shape.dim, shape.ffn
    per_block_inner = 2 * tokens * (9 * d + 3 * h)
    if checkpointing:
        inputs = (shape.main_blocks * tokens + shape.refiner_blocks * (img + cap)) * d
        per_pass = inputs + per_block_inner
    else:
        per_pass = (shape.main_blocks + shape.refiner_blocks) * per_block_inner
    passes = 2 if phase == 1 else 3
    out["activations"] = batch * passes * per_pass * act_bytes
    gib = {k: v / GIB for k, v in out.items()}
    if gpu:
        gib["runtime"] = RUNTIME_GIB
    gib["total"] = sum(gib.values())
    return gib
