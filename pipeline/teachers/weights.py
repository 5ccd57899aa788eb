"""Pre-flight checks of a teacher folder's weight files, reading only safetensors headers
(nothing is loaded, nothing is unpickled): every weighted component has safetensors weights,
a pickle-based weight file (``.bin``, ``.pt``, ...) is refused unread, every safetensors file is
complete (its size is what its header describes), and the transformer's tensors have the shapes
its ``config.json`` implies (the model built on the meta device). Each problem is one
:class:`~pipeline.errors.ArtifactError` line naming ``teacher.path``, the file and the way out.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

from pipeline.errors import ArtifactError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files in a pickle-based format: never read (unpickling runs arbitrary code)."""
_MAX_HEADER_BYTES = 100 << 20  # the format's own limit on the JSON header


def check_teacher_weights(folder: Path, weighted: tuple[str, ...],
                          transformer_config: dict, fingerprint: dict[str, str]) -> None:
    """Check the components ``weighted`` (``transformer``, ``vae``, ...) of ``folder``.
    ``fingerprint`` (file -> content hash or size:mtime) keys the cached header checks."""
    for part in weighted:
        _check_formats(folder, part)
    _check_headers(str(folder), tuple(weighted), json.dumps(transformer_config, sort_keys=True),
                   tuple(sorted(fingerprint.items())))


def _check_formats(folder: Path, part: str) -> None:
    base = folder / part
    files = sorted(f for f in base.rglob("*") if f.is_file()) if base.is_dir() else []
    if any(f.suffix == ".safetensors" for f in files):
        return  # diffusers and transformers read these and ignore any pickle copy
    pickled = [f for f in files if f.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise ArtifactError(
            f"teacher.path: {pickled[0]}: a pickle weight file, refused unread (twostep loads "
            f"weights only from safetensors: unpickling runs code); save the {part} as "
            f"safetensors (save_pretrained(..., safe_serialization=True)) with a tool you trust")
    raise ArtifactError(f"teacher.path: {base}: no .safetensors weight file; the {part} "
                        f"weights must be saved as safetensors")


@functools.lru_cache(maxsize=16)
def _check_headers(folder: str, weighted: tuple[str, ...], transformer_config: str,
                   fingerprint: tuple[tuple[str, str], ...]) -> None:
    shapes: dict[str, tuple[list[int], Path]] = {}
    for name, _ in fingerprint:
        part = name.split("/", 1)[0]
        if part not in weighted or not name.endswith(".safetensors"):
            continue
        header = safetensors_header(Path(folder) / name)
        if part == "transformer":
            for tensor, info in header.items():
                shapes[tensor] = (list(info["shape"]), Path(folder) / name)
    _check_transformer_shapes(Path(folder), json.loads(transformer_config), shapes)


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file describes (name -> dtype, shape, data_offsets), after
    checking that the file is complete; :class:`ArtifactError` naming the file otherwise."""
    way_out = "copy the file again from its source"
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            raw = handle.read(8)
            if len(raw) < 8:
                raise ArtifactError(f"teacher.path: {path}: not a safetensors file ({size} "
                                    f"bytes, no header); {way_out}")
            (length,) = struct.unpack("<Q", raw)
            if length > min(_MAX_HEADER_BYTES, size - 8):
                raise ArtifactError(f"teacher.path: {path}: truncated or not a safetensors file "
                                    f"(header of {length} bytes in a file of {size}); {way_out}")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise ArtifactError(f"teacher.path: {path}: cannot read it: {exc.strerror or exc}"
                            ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ArtifactError(f"teacher.path: {path}: not a safetensors file (its header is not "
                            f"JSON); {way_out}") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"teacher.path: {path}: not a safetensors file; {way_out}")
    header.pop("__metadata__", None)
    try:
        end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        for info in header.values():
            info["shape"] = [int(d) for d in info["shape"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ArtifactError(f"teacher.path: {path}: not a safetensors file (malformed "
                            f"header); {way_out}") from None
    if 8 + length + end != size:
        state = "truncated" if size < 8 + length + end else "corrupt"
        raise ArtifactError(f"teacher.path: {path}: {state} safetensors file ({size} bytes, its "
                            f"header describes {8 + length + end}); {way_out}")
    return header


def _check_transformer_shapes(folder: Path, config: dict,
                              found: dict[str, tuple[list[int], Path]]) -> None:
    """Every tensor of the weight files that the model of ``config`` has must have the model's
    shape, and the files must hold at least one of the model's tensors."""
    import torch
    from diffusers import ZImageTransformer2DModel

    try:
        with torch.device("meta"):
            model = ZImageTransformer2DModel.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any config the model rejects is the user's file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"teacher.path: {folder / 'transformer' / 'config.json'}: not a "
                            f"valid Z-Image transformer config ({first})") from None
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    common = [name for name in expected if name in found]
    if expected and not common:
        files = sorted({str(path) for _, path in found.values()}) or ["(no tensor)"]
        raise ArtifactError(f"teacher.path: {files[0]}: holds none of the tensors of the model "
                            f"transformer/config.json describes: weights of another model")
    for name in common:
        shape, path = found[name]
        if shape != expected[name]:
            raise ArtifactError(
                f"teacher.path: {path}: tensor {name!r} has shape {shape}, but "
                f"transformer/config.json makes it {expected[name]}: the weights and the config "
                f"are of different models; use the config these weights were saved with")
