"""The ``decoupled_lora`` parameterization: one frozen base transformer (the teacher's weights)
with two LoRA adapters, ``step1`` for G1 and ``step2`` for G2, through diffusers'
``PeftAdapterMixin`` (``add_adapter`` / ``set_adapter`` / ``disable_adapters``).

``W x`` of every targeted ``nn.Linear`` becomes ``W x + (alpha / rank) B_s A_s x`` for the active
step ``s``, ``A_s`` ``(rank, in)``, ``B_s`` ``(out, rank)`` (B starts at zero, so both steps start
as the teacher). With adapters disabled the module is the teacher itself: the discriminator's
backbone reuses it, so a run holds one base model instead of three.

Two traps this module handles (both would silently train the wrong thing):

- PEFT's ``set_adapter`` / ``disable_adapters`` set ``requires_grad=False`` on the inactive
  adapters, and autograd drops gradients for leaves that no longer require them when backward
  runs. Switching steps inside one graph (phase 2 chains step 1 into step 2 and the
  discriminator) would lose step 1's gradients, so every switch restores ``requires_grad`` on
  all adapter weights (an inactive adapter takes no part in the forward, so it gets none).
- Gradient checkpointing recomputes a block in backward, when another adapter is active; the
  checkpoint function here records the adapter of the forward and recomputes under it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from schemas.config import LoraConfig

ADAPTERS = ("step1", "step2")
BASE = None  # adapter name meaning "adapters disabled": the frozen teacher


def matches(module_name: str, targets: list[str]) -> bool:
    """PEFT's rule for a list of target names: the module's name equals one or ends with
    ``.<target>``."""
    return any(module_name == t or module_name.endswith(f".{t}") for t in targets)


def targeted_linears(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and matches(name, targets)}


def check_lora(model: nn.Module, cfg: LoraConfig) -> None:
    """Raise a one-line ``ValueError`` when ``cfg`` cannot apply to ``model`` (a meta-device
    model is enough): targets that match no linear layer, or a rank above a layer's size."""
    found = targeted_linears(model, cfg.target_modules)
    if not found:
        raise ValueError(f"target_modules {cfg.target_modules} match no linear layer of the "
                         f"transformer (its linear layers: {', '.join(_linear_kinds(model))})")
    unmatched = [t for t in cfg.target_modules if not any(matches(n, [t]) for n in found)]
    if unmatched:
        raise ValueError(f"target_modules {unmatched} match no linear layer of the transformer")
    name, layer = min(found.items(), key=lambda kv: min(kv[1].in_features, kv[1].out_features))
    limit = min(layer.in_features, layer.out_features)
    if cfg.rank > limit:
        raise ValueError(f"rank {cfg.rank} is larger than layer {name} "
                         f"({layer.in_features} -> {layer.out_features}); the rank can be at "
                         f"most {limit}")


def _linear_kinds(model: nn.Module) -> list[str]:
    """Linear layer names with block indices dropped (``layers.3.attention.to_q`` ->
    ``attention.to_q``): what a user can put in ``target_modules``."""
    import re

    kinds = {re.sub(r"^(\w+)\.\d+\.", "", name) for name, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    return sorted(kinds)


class StepAdapters:
    """Two LoRA adapters on one base transformer and which of them is active.

    ``use(name)`` activates ``step1``, ``step2`` or, for :data:`BASE`, none; it is a context
    manager restoring the previous state. Adapter weights always keep ``requires_grad=True``.
    """

    def __init__(self, base: nn.Module, cfg: LoraConfig) -> None:
        from peft import LoraConfig as PeftLoraConfig

        check_lora(base, cfg)
        base.requires_grad_(False)
        for name in ADAPTERS:
            # A is drawn from torch's global generator: seed it for identical ranks. PEFT
            # warns that a second adapter is "multiple adapters": that is the design.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                base.add_adapter(PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                                target_modules=list(cfg.target_modules),
                                                lora_dropout=0.0, init_lora_weights=True),
                                 adapter_name=name)
        # float32 adapters on any base: PEFT gives them the base's dtype (bf16 on GPUs), and
        # adapters are the trained weights (the LoRA layer casts its input to them).
        for module in base.modules():
            for name in ("lora_A", "lora_B"):
                if isinstance(getattr(module, name, None), nn.ModuleDict):
                    getattr(module, name).float()
        self.base = base
        self.active: str | None = ADAPTERS[0]
        self._apply(self.active)

    @property
    def weights(self) -> list[nn.Parameter]:
        """The adapter weights, looked up each time: FSDP2 replaces the parameter objects."""
        return [p for n, p in self.base.named_parameters() if ".lora_" in n]

    def _apply(self, name: str | None) -> None:
        if name is BASE:
            self.base.disable_adapters()
        else:
            self.base.enable_adapters()
            self.base.set_adapter(name)
        for p in self.weights:
            p.requires_grad_(True)
        self.active = name

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[nn.Module]:
        before = self.active
        if name != before:
            self._apply(name)
        try:
            yield self.base
        finally:
            if self.active != before:
                self._apply(before)

    def checkpoint_function(self) -> Callable:
        """For ``enable_gradient_checkpointing``: recompute a block under the adapter that was
        active in its forward."""

        def run(block: nn.Module, *args):
            active = self.active

            def forward(*inner):
                with self.use(active):
                    return block(*inner)

            return checkpoint(forward, *args, use_reentrant=False)

        return run

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.weights)


def merged_copy(adapters: StepAdapters, name: str) -> nn.Module:
    """A plain transformer with adapter ``name`` fused into the base weights and no PEFT
    layers left (diffusers' ``fuse_lora`` then ``unload_lora``), for evaluation and export."""
    import copy

    model = copy.deepcopy(adapters.base)
    model.enable_adapters()
    model.fuse_lora(adapter_names=[name])
    model.unload_lora()
    return model.requires_grad_(False)
