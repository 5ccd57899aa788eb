"""What a teacher is, read from its folder's configs without loading any weights: its
schedule, sampling-space shape, caption width and identity. Stages use this to validate a
run (e.g. that ``sigma_mid`` lies on the schedule) before any worker starts; it also checks
the folder's architecture (class names) and its weight files (safetensors only, complete, of
the transformer config's shapes: :mod:`pipeline.teachers.weights`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ArtifactError, ConfigError
from pipeline.hashing import files_fingerprint
from pipeline.teachers.weights import check_teacher_weights
from schemas.config import TeacherConfig


@dataclass(frozen=True)
class TeacherDescription:
    kind: str
    folder: Path
    teacher_id: str
    sigmas: list[float]
    latent_shape: tuple[int, int, int]
    caption_dim: int
    fingerprint: dict[str, str]
    """Config and weight file -> content sha256 (small files) or size:mtime (large ones)."""


def same_teacher(recorded: str, current: str) -> bool:
    """Whether two teacher ids (``kind:folder-name@digest``) name one teacher: the same kind
    and content digest. The folder's name is in an id to be read, not compared: a renamed or
    moved copy is the same teacher (the cache keys leave its place out too)."""
    def identity(teacher_id: str) -> tuple[str, str]:
        return teacher_id.partition(":")[0], teacher_id.rpartition("@")[2]

    return identity(recorded) == identity(current)


OTHER_TEACHER_HINT = ("if the teacher is the same, a twostep upgrade changed how teachers are "
                      "identified: rerun `distill run` to recompute with it")
"""The way out that a teacher-mismatch error adds for a workspace older than the rules."""


def teacher_folder(cfg: TeacherConfig) -> Path:
    if cfg.kind == "toy" and not cfg.path:
        from pipeline.toy.paths import TEACHER_DIR as ASSET_DIR

        return ASSET_DIR
    return Path(cfg.path or "")


_WAY_OUT = {
    "toy": "point teacher.path at a toy teacher folder (build one with `distill toy "
           "build-teacher`) or leave it unset for the shipped one",
    "zimage": "point teacher.path at a local Z-Image Turbo diffusers folder (model_index.json, "
              "transformer/, vae/, text_encoder/, tokenizer/, scheduler/)",
}
ZIMAGE_PIPELINE = "ZImagePipeline"
ZIMAGE_TRANSFORMER = "ZImageTransformer2DModel"


def _read_json(path: Path, kind: str) -> dict:
    """A config file of the teacher folder; :class:`ArtifactError` naming ``teacher.path``,
    the file and the way out when it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"teacher.path: {path} is missing: not a {kind} teacher folder; "
                            f"{_WAY_OUT[kind]}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"teacher.path: {path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ArtifactError(f"teacher.path: {path}: cannot read it: {exc.strerror or exc}"
                            ) from None
    if not isinstance(data, dict):
        raise ArtifactError(f"teacher.path: {path}: not a JSON object")
    return data


def _int_field(config: dict, key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArtifactError(f"teacher.path: {path}: {key} is {value!r}, expected a positive "
                            f"integer; not a Z-Image transformer config")
    return value


def _check_class(config: dict, expected: str, path: Path, kind: str) -> None:
    found = config.get("_class_name")
    if found != expected:
        raise ArtifactError(f"teacher.path: {path}: _class_name is {found!r}, not {expected!r}: "
                            f"a model of another architecture; {_WAY_OUT[kind]}")


def describe_teacher(cfg: TeacherConfig, check_weights: bool = True) -> TeacherDescription:
    """Read the teacher folder's configs and, with ``check_weights``, check its weight files'
    headers (see :mod:`pipeline.teachers.weights`; the shape check imports diffusers, which a
    cache check, needing only the fingerprint, skips); raise :class:`ArtifactError` /
    :class:`ConfigError` naming what is missing or incompatible."""
    folder = teacher_folder(cfg)
    if not folder.is_dir():
        raise ArtifactError(f"teacher.path {str(folder)!r}: folder not found; "
                            f"{_WAY_OUT[cfg.kind]}")
    if cfg.kind == "zimage":
        index_path = folder / "model_index.json"
        _check_class(_read_json(index_path, cfg.kind), ZIMAGE_PIPELINE, index_path, cfg.kind)
    elif (folder / "model_index.json").is_file():
        raise ArtifactError(f"teacher.path: {folder / 'model_index.json'}: a diffusers pipeline "
                            f"folder, not a toy teacher; set teacher.kind=zimage for a Z-Image "
                            f"folder")
    transformer_path = folder / "transformer" / "config.json"
    transformer = _read_json(transformer_path, cfg.kind)
    _check_class(transformer, ZIMAGE_TRANSFORMER, transformer_path, cfg.kind)
    patch = _int_field({"all_patch_size": transformer.get("all_patch_size", [2])},
                       "all_patch_size", transformer_path)
    channels = _int_field(transformer, "in_channels", transformer_path)
    caption_dim = _int_field(transformer, "cap_feat_dim", transformer_path)
    _int_field(transformer, "n_layers", transformer_path)
    if cfg.kind == "toy":
        if (cfg.height, cfg.width) != (32, 32):
            raise ConfigError(f"teacher.height/width {cfg.height}x{cfg.width}: the toy teacher "
                              f"makes 32x32 images")
        from pipeline.schedule import shifted_sigmas

        sigmas = shifted_sigmas(cfg.steps)
        latent = (channels, 32, 32)
        parts: tuple[str, ...] = ("transformer",)
        if (folder / "autoencoder").exists():  # a latent toy teacher
            autoencoder_path = folder / "autoencoder" / "config.json"
            autoencoder = _read_json(autoencoder_path, cfg.kind)
            grid = _int_field({"grid": autoencoder.get("grid", 8)}, "grid", autoencoder_path)
            if autoencoder.get("channels", channels) != channels:
                raise ArtifactError(
                    f"teacher.path: {transformer_path}: in_channels is {channels} but the "
                    f"autoencoder's latent has {autoencoder['channels']} channels "
                    f"({autoencoder_path}): the two are not of one toy teacher; rebuild it "
                    f"(distill toy build-teacher)")
            latent = (channels, grid, grid)
            parts = ("transformer", "autoencoder")
        weighted = parts
    else:
        from diffusers import FlowMatchEulerDiscreteScheduler

        from pipeline.export.pipeline_twostep import check_image_tokens
        from pipeline.teachers.zimage import zimage_sigmas

        vae = _read_json(folder / "vae" / "config.json", cfg.kind)
        scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1) * patch
        if cfg.height % scale or cfg.width % scale:
            raise ConfigError(f"teacher.height/width {cfg.height}x{cfg.width}: must be "
                              f"multiples of {scale} for this Z-Image folder")
        try:
            check_image_tokens(cfg.height, cfg.width, scale,  # diffusers' default tables:
                               transformer.get("axes_lens", [1024, 512, 512]))
        except ValueError as exc:
            raise ConfigError(f"teacher.height/width: {exc}") from None
        latent = (channels, cfg.height * patch // scale, cfg.width * patch // scale)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            _read_json(folder / "scheduler" / "scheduler_config.json", cfg.kind))
        sigmas = zimage_sigmas(scheduler, cfg.steps, latent)
        parts = ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer",
                 "scheduler")
        weighted = ("transformer", "vae", "text_encoder")
    fingerprint = files_fingerprint(folder, parts)
    if cfg.kind == "toy":  # its caption features come from MiniLM, which no folder holds
        from pipeline.toy.paths import minilm_identity

        fingerprint["text_encoder:minilm"] = minilm_identity()
    if check_weights:
        check_teacher_weights(folder, weighted, transformer, fingerprint)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return TeacherDescription(
        kind=cfg.kind, folder=folder, teacher_id=f"{cfg.kind}:{folder.name}@{digest}",
        sigmas=sigmas, latent_shape=latent, caption_dim=caption_dim,
        fingerprint=fingerprint)
