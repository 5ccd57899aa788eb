"""Load a :class:`~schemas.config.DistillConfig` from a preset name or YAML file plus
``a.b=value`` overrides, turning every validation problem into one readable line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.errors import ConfigError
from schemas.config import DistillConfig

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"


def available_presets() -> list[str]:
    """Names of the YAML presets shipped in ``configs/``."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(config: str) -> Path:
    """A preset name (``toy``) or a path to a YAML file -> the file's path."""
    candidate = Path(config).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"config file not found: {candidate}")
        return candidate
    preset = PRESETS_DIR / f"{config}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(
        f"unknown config {config!r}: not a file and not a preset "
        f"(presets: {', '.join(available_presets()) or 'none'})"
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"curate.near_dedup.threshold=0.9"`` -> (["curate", "near_dedup", "threshold"], 0.9).

    The value is parsed as YAML, so ``3`` is an int, ``true`` a bool, ``[a, b]`` a list and
    ``null`` None; quote it (``name='007'``) to force a string.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} must look like 'section.field=value'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating missing mappings; list items can be
    addressed by index (``curate.sources.0.path=...``)."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where, item)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {item!r}: {where} is a value, not a section")
        node = child
    last = path[-1]
    if isinstance(node, list):
        index = _list_index(node, last, ".".join(path), item)
        node[index] = value
    else:
        node[last] = value


def _list_index(node: list[Any], part: str, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(
            f"override {item!r}: {where} needs a list index below {len(node)}, got {part!r}"
        )
    return int(part)


def _list_item(node: list[Any], part: str, where: str, item: str) -> Any:
    return node[_list_index(node, part, where, item)]


def format_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem, each naming the dotted field, the message and the bad value."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p)) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")  # pydantic's prefix on our validators
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
        lines.append(f"{origin}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def one_line_problems(exc: ValidationError) -> str:
    """A validation error on one line: ``field: message; ...`` (for messages that already
    name their file)."""
    return "; ".join(line.split(": ", 1)[1] for line in
                     format_validation_error(exc, "-").splitlines())


def _is_union_tag(part: Any) -> bool:
    # Discriminated unions add the tag ('file', 'toy') to the location; it is noise to a user.
    return part in ("file", "toy")


def load_config(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
) -> DistillConfig:
    """Load a preset or YAML file, apply overrides, validate.

    Raises :class:`ConfigError` with a message that names the file, the field and the problem.
    """
    path = resolve_config_path(config)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    for item in overrides or []:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item)
    if workspace is not None:
        data["workspace"] = workspace
    origin = str(path) + (" (with overrides)" if overrides else "")
    try:
        return DistillConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None


def workspace_of(cfg: DistillConfig) -> str:
    """The artifact root: the configured workspace or ``./runs/<name>``."""
    return cfg.workspace if cfg.workspace else str(Path("runs") / cfg.name)
