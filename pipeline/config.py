"""Load a :class:`~schemas.config.DistillConfig` from a preset name or YAML file plus
``a.b=value`` overrides, turning every validation problem into one readable line."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from schemas.config import DistillConfig, FileSource, ToySource

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
        # one line, like a file's YAML error; columns count from the value's first character
        raise ConfigError(f"override {item!r}: value {raw!r} is "
                          f"{_yaml_problem(exc).replace('line 1, ', '')}; quote it to pass a "
                          f"string") from None
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


def format_validation_error(exc: ValidationError, origin: str,
                            model: type[BaseModel] | None = DistillConfig) -> str:
    """One line per problem, each naming the dotted field, the message and the bad value;
    an unknown field of ``model`` (the validated model) gets the closest known name."""
    lines = []
    for err in exc.errors():
        loc = _dotted(err["loc"])
        msg, hint = err["msg"], ""
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            hint = _known_fields_hint(model, err["loc"]) if model is not None else ""
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")  # pydantic's prefix on our validators
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
        lines.append(f"{origin}: {loc}: {msg}{shown}{hint}")
    return "\n".join(lines)


def _known_fields_hint(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """``"; did you mean 'train_init'?"`` (or the section's fields) for an unknown field at
    ``loc`` in ``root``; "" when the section cannot be resolved."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # a list item: the model is the list's item type, resolved below
        if _is_union_tag(part):
            model = {"file": FileSource, "toy": ToySource}[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = _model_in(field.annotation)
        if model is None:
            return ""
    names = sorted(getattr(model, "model_fields", {}))
    if not names:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; the fields here are {', '.join(names)}"


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (``X``, ``X | None``, ``list[X]``, ``dict[str,
    X]``), a union of source models as is (resolved by its tag), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    """``("curate", "sources", 0, "path")`` -> ``curate.sources[0].path``."""
    out = ""
    for part in loc:
        if _is_union_tag(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def one_line_problems(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A validation error of ``model`` on one line: ``field: message; ...`` (for messages
    that already name their file)."""
    return "; ".join(line.split(": ", 1)[1] for line in
                     format_validation_error(exc, "-", model).splitlines())


def _is_union_tag(part: Any) -> bool:
    # Discriminated unions add the tag ('file', 'toy') to the location; it is noise to a user.
    return part in ("file", "toy")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; :class:`ConfigError` (one line naming the file and
    the line) when it is unreadable, not UTF-8, not YAML or not a mapping."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text at line {line}, column {column} (byte "
            f"0x{raw[exc.start]:02x}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"(curate:, teacher:, ...), got a {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error on one line: where, what, and in which construct."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    hint = ""
    if context and context_mark is not None:
        hint = (f" ({context} that starts at line {context_mark.line + 1}, column "
                f"{context_mark.column + 1})")
    elif context:
        hint = f" ({context})"
    return f"not valid YAML{where}: {problem}{hint}; fix the syntax there"


def load_config(
    config: str = "toy",
    overrides: list[str] | None = None,
    workspace: str | None = None,
) -> DistillConfig:
    """Load a preset or YAML file, apply overrides, validate.

    Raises :class:`ConfigError` with a message that names the file, the field and the problem.
    """
    path = resolve_config_path(config)
    data = read_yaml_mapping(path)
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
        # one line: every problem after the file, each naming its field
        raise ConfigError(f"{origin}: {one_line_problems(exc, DistillConfig)}") from None


def workspace_of(cfg: DistillConfig) -> str:
    """The artifact root: the configured workspace or ``./runs/<name>``."""
    return cfg.workspace if cfg.workspace else str(Path("runs") / cfg.name)
