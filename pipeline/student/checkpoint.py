"""Checkpoints without pickle: weights and optimizer tensors as safetensors, the rest as JSON.

A checkpoint folder ``checkpoints/step-NNNNNNN/`` holds, for each named module,
``<name>.safetensors``; for each optimizer, ``<name>.optim.safetensors`` (its per-parameter
state tensors, keyed ``<param index>.<field>``) and ``<name>.optim.json`` (param groups and
scalar state); ``rng.safetensors`` (torch generator states) and ``state.json`` (step, data
position, python/numpy-free extras). It is written to a temporary folder and renamed, so a
folder named ``step-*`` is always complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

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


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str,
              prefix: str = "") -> None:
    """Load ``tensors`` (keys ``prefix + name``) into ``module``, or raise an
    :class:`ArtifactError` naming the first mismatch (another architecture)."""
    own = module.state_dict()
    picked = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(picked))
    extra = sorted(set(picked) - set(own))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise ArtifactError(f"{where}: weights do not fit this model ({detail}; another "
                            f"architecture?)")
    for name, value in picked.items():
        if own[name].shape != value.shape:
            raise ArtifactError(f"{where}: {prefix}{name} has shape {tuple(value.shape)}, the "
                                f"model expects {tuple(own[name].shape)} (another architecture?)")
    module.load_state_dict(picked)


def _optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for index, fields in state["state"].items():
        for name, value in fields.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                       meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer],
                    generators: dict[str, torch.Generator], state: dict[str, Any],
                    keep: int = 1) -> Path:
    """Write ``checkpoints/step-<step>`` atomically; keep the newest ``keep`` checkpoints."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file(module_tensors(module), str(tmp / f"{name}.safetensors"))
    for name, opt in optimizers.items():
        tensors, meta = _optimizer_parts(opt)
        save_file(tensors, str(tmp / f"{name}.optim.safetensors"))
        (tmp / f"{name}.optim.json").write_text(json.dumps(meta))
    save_file({name: g.get_state() for name, g in generators.items()},
              str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in _complete(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer],
                    generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns ``state.json``."""
    for name, module in modules.items():
        load_into(module, load_weights(folder / f"{name}.safetensors"), str(folder / name))
    for name, opt in optimizers.items():
        meta = json.loads((folder / f"{name}.optim.json").read_text())
        _restore_optimizer(opt, load_weights(folder / f"{name}.optim.safetensors"), meta)
    rng = load_weights(folder / "rng.safetensors")
    for name, g in generators.items():
        g.set_state(rng[name])
    return json.loads((folder / "state.json").read_text())


def student_tensors(student) -> dict[str, torch.Tensor]:
    """A :class:`~pipeline.student.model.TwoStepStudent`'s weights, keyed
    ``<generator prefix>.<name>`` (``g1.``/``g2.``, or ``g.`` when shared)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in student.generators().items():
        out.update(module_tensors(module, f"{prefix}."))
    return out


def load_student_weights(student, path: Path) -> None:
    """Load a ``student.safetensors``/``ema.safetensors`` into ``student``, or raise an
    :class:`ArtifactError` naming the first tensor that does not fit."""
    tensors = load_weights(path)
    for prefix, module in student.generators().items():
        load_into(module, tensors, str(path), prefix=f"{prefix}.")
