"""Checkpoints without pickle: weights and optimizer tensors as safetensors, the rest as JSON.

State goes through ``torch.distributed.checkpoint.state_dict`` (``get_/set_model_state_dict``,
``get_/set_optimizer_state_dict`` with ``full_state_dict=True``): the same code serves one
worker, DDP and FSDP2, and what is written is consolidated (FQN-keyed full tensors), so a
checkpoint does not depend on how the modules were sharded. Frozen parameters (the LoRA base)
are not written: they are the teacher's.

A checkpoint folder ``checkpoints/step-NNNNNNN/`` holds, for each named module,
``<name>.safetensors`` (its trainable tensors); for each optimizer, ``<name>.optim.safetensors``
(per-parameter state, keyed ``<param FQN>/<field>``) and ``<name>.optim.json`` (param groups,
with FQNs for params); ``rng.safetensors`` (torch generator states) and ``state.json`` (step,
world size, strategy, the MLflow run). It is written to a temporary folder and renamed, so a
folder named ``step-*`` is always complete. Every rank must call :func:`save_checkpoint` and
:func:`load_checkpoint` (gathering is collective under FSDP2); rank 0 writes.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from pipeline.errors import ArtifactError

CHECKPOINTS = "checkpoints"


def step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINTS / f"step-{step:07d}"


def _complete(root: Path) -> list[Path]:
    folder = root / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"step-\d+", p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = _complete(root)
    return found[-1] if found else None


def module_tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_weights(path: Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None


FULL = dict(full_state_dict=True, cpu_offload=True)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def gather_trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable tensors (and buffers) of ``module`` by FQN, on CPU. Collective under
    FSDP2; filled on rank 0 (other ranks may get an empty dict)."""
    options = StateDictOptions(ignore_frozen_params=True, **FULL)
    # Unsharded CPU modules get their own parameters back (cpu_offload does not copy a CPU
    # tensor): copy those, or a later in-place update (the EMA swap) changes what was gathered.
    own = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
    return {k: v.clone() if v.data_ptr() in own else v.contiguous()
            for k, v in get_model_state_dict(module, options=options).items()}


def set_trainable(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Load full FQN-keyed trainable tensors into ``module`` (sharded or not), or raise an
    :class:`ArtifactError` naming the first tensor that does not fit."""
    expected = {n: tuple(p.shape) for n, p in module.named_parameters() if p.requires_grad}
    _check_names(expected, {k: tuple(v.shape) for k, v in tensors.items()}, where)
    set_model_state_dict(module, tensors, options=StateDictOptions(full_state_dict=True,
                                                                   strict=False))


def _check_names(expected: dict[str, tuple], found: dict[str, tuple], where: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ArtifactError(f"{where}: weights do not fit this model ({detail}; another "
                            f"architecture or parameterization?)")
    for name, shape in expected.items():
        if found[name] != shape:
            raise ArtifactError(f"{where}: {name} has shape {found[name]}, the model expects "
                                f"{shape} (another architecture?)")


def _optimizer_parts(module: torch.nn.Module,
                     opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = get_optimizer_state_dict(module, opt, options=StateDictOptions(**FULL))
    tensors, scalars = {}, {}
    for fqn, fields in state.get("state", {}).items():
        for name, value in fields.items():
            if torch.is_tensor(value):
                tensors[f"{fqn}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}/{name}"] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def _restore_optimizer(module: torch.nn.Module, opt: torch.optim.Optimizer,
                       tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[str, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        fqn, name = key.rsplit("/", 1)
        state.setdefault(fqn, {})[name] = value
    set_optimizer_state_dict(module, opt, {"state": state, "param_groups": meta["param_groups"]},
                             options=StateDictOptions(full_state_dict=True))


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]],
                    generators: dict[str, torch.Generator], state: dict[str, Any],
                    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
                    keep: int = 1) -> Path:
    """Write ``checkpoints/step-<step>`` atomically (rank 0; every rank calls); keep the newest
    ``keep`` checkpoints. ``optimizers`` maps a name to ``(module it optimizes, optimizer)``;
    ``extra_tensors`` are already-gathered tensor files (``<name>.safetensors``)."""
    parts = {name: gather_trainable(m) for name, m in modules.items()}
    optim = {name: _optimizer_parts(m, opt) for name, (m, opt) in optimizers.items()}
    final = step_dir(root, step)
    if _rank() != 0:
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, tensors in {**parts, **(extra_tensors or {})}.items():
        save_file(tensors, str(tmp / f"{name}.safetensors"))
    for name, (tensors, meta) in optim.items():
        save_file(tensors, str(tmp / f"{name}.optim.safetensors"))
        (tmp / f"{name}.optim.json").write_text(json.dumps(meta))
    save_file({name: g.get_state() for name, g in generators.items()},
              str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    write_checksums(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in _complete(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


CHECKSUMS = "checksums.json"
"""Size and sha256 of every other file of a checkpoint, written last inside its temporary
folder: a resume verifies them (:func:`verify_checkpoint`) before any worker loads it."""


def write_checksums(folder: Path) -> None:
    from pipeline.hashing import file_sha256

    files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(files, indent=2))


def verify_checkpoint(folder: Path) -> None:
    """Every file of a checkpoint as its ``checksums.json`` says (size, then sha256); an
    :class:`ArtifactError` naming the file and the way out otherwise. A checkpoint of an
    older version (no checksums) is taken as it is."""
    from pipeline.hashing import file_sha256

    listing = folder / CHECKSUMS
    if not listing.exists():
        return
    way_out = (f"delete {folder} to resume from the checkpoint before it (or from step 0 if "
               f"there is none), or start the stage over with --force")
    try:
        files = json.loads(listing.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{listing}: unreadable ({exc}); {way_out}") from None
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing from the checkpoint; {way_out}")
        if path.stat().st_size != entry["size"] or file_sha256(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: does not match the checkpoint's checksums (corrupt); "
                                f"{way_out}")


def resume_layout(world_size: int, strategy: str, parameterization: str) -> dict[str, Any]:
    """What a checkpoint records and must match to be resumed exactly (the data order depends
    on the number of workers; the float sums on the strategy)."""
    return {"world_size": world_size, "strategy": strategy,
            "parameterization": parameterization}


def checkpoint_state(folder: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint (step, world_size, strategy, ...)."""
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{folder / 'state.json'}: unreadable ({exc}); delete the "
                            f"checkpoint folder to start this stage over") from None


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]],
                    generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Restore the modules, optimizers and generators saved by :func:`save_checkpoint` (every
    rank reads the consolidated files and keeps its shard); returns ``state.json``."""
    for name, module in modules.items():
        set_trainable(module, load_weights(folder / f"{name}.safetensors"),
                      str(folder / f"{name}.safetensors"))
    for name, (module, opt) in optimizers.items():
        meta = json.loads((folder / f"{name}.optim.json").read_text())
        _restore_optimizer(module, opt, load_weights(folder / f"{name}.optim.safetensors"), meta)
    rng = load_weights(folder / "rng.safetensors")
    for name, g in generators.items():
        g.set_state(rng[name])
    return checkpoint_state(folder)


def student_file_tensors(student, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gathered FQN-keyed student tensors -> weight-file keys (see
    :mod:`pipeline.student.model`)."""
    return {student.file_key(k): v for k, v in tensors.items()}


def student_tensors(student) -> dict[str, torch.Tensor]:
    """An unsharded :class:`~pipeline.student.model.TwoStepStudent`'s trainable weights, keyed
    as in its weight files."""
    return student_file_tensors(student, {n: p.detach().cpu().contiguous()
                                          for n, p in student.trainable().items()})


def load_student_weights(student, path: Path) -> None:
    """Load a ``student.safetensors``/``ema.safetensors`` into an unsharded ``student``, or
    raise an :class:`ArtifactError` naming the first tensor that does not fit."""
    tensors = load_weights(path)
    by_key = {student.file_key(n): n for n in student.trainable()}
    _check_names({k: tuple(student.trainable()[n].shape) for k, n in by_key.items()},
                 {k: tuple(v.shape) for k, v in tensors.items()}, str(path))
    student.load_state_dict({by_key[k]: v for k, v in tensors.items()}, strict=False)
