"""Parallelization of the training modules, applied from outside the models (as torchtitan's
``parallelize_*`` functions do): the models know nothing of it.

- ``ddp``: ``DistributedDataParallel`` over the student; every rank holds whole models.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every transformer block (noise and
  context refiners, main layers) of each distinct transformer (G1, G2, or the LoRA base shared
  with the discriminator; the decoupled discriminator's frozen backbone too), then on each
  transformer's root. On GPU with bf16 the policy is bf16 parameters with float32 gradient
  reduction; on CPU (gloo) plain float32. The discriminator heads are not sharded (a few
  thousand parameters; their gradients are averaged by one all-reduce).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from pipeline.student.model import TwoStepStudent

BLOCK_LISTS = ("noise_refiner", "context_refiner", "siglip_refiner", "layers")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a ``ZImageTransformer2DModel``, in execution order."""
    blocks: list[nn.Module] = []
    for name in BLOCK_LISTS:
        blocks.extend(getattr(model, name, None) or [])
    return blocks


def shard_transformer(model: nn.Module, mesh, mp_policy) -> None:
    """``fully_shard`` every block, then the root (its embedders and final layer)."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)


def parallelize(student: TwoStepStudent, backbone: nn.Module | None,
                strategy: Literal["ddp", "fsdp2"], world: int, device: torch.device,
                bf16: bool, find_unused_parameters: bool = False) -> nn.Module:
    """Apply ``strategy`` in place over ``world`` ranks; returns the module to call for the
    student's forward (the DDP wrapper, or the student itself). ``backbone``: the
    discriminator's frozen transformer when it is a separate module."""
    if world == 1:
        return student
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            student, find_unused_parameters=find_unused_parameters)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mesh = init_device_mesh(device.type, (world,))
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" and bf16 else MixedPrecisionPolicy()
    for model in student.transformers():
        shard_transformer(model, mesh, mp_policy)
    if backbone is not None and all(backbone is not m for m in student.transformers()):
        shard_transformer(backbone, mesh, mp_policy)
    return student
