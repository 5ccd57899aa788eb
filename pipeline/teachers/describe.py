"""What a teacher is, read from its folder's configs without loading any weights: its
schedule, sampling-space shape, caption width and identity. Stages use this to validate a
run (e.g. that ``sigma_mid`` lies on the schedule) before any worker starts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ArtifactError, ConfigError
from pipeline.hashing import files_fingerprint
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


def teacher_folder(cfg: TeacherConfig) -> Path:
    if cfg.kind == "toy" and not cfg.path:
        from pipeline.toy.paths import TEACHER_DIR as ASSET_DIR

        return ASSET_DIR
    return Path(cfg.path or "")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (not a {path.parent.name} folder of a "
                            f"diffusers model)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def describe_teacher(cfg: TeacherConfig) -> TeacherDescription:
    """Read the teacher folder's configs; raise :class:`ArtifactError` / :class:`ConfigError`
    naming what is missing or incompatible."""
    folder = teacher_folder(cfg)
    if not folder.is_dir():
        raise ArtifactError(f"teacher.path {str(folder)!r}: folder not found")
    transformer = _read_json(folder / "transformer" / "config.json")
    patch = int(transformer.get("all_patch_size", [2])[0])
    channels = int(transformer["in_channels"])
    if cfg.kind == "toy":
        if (cfg.height, cfg.width) != (32, 32):
            raise ConfigError(f"teacher.height/width {cfg.height}x{cfg.width}: the toy teacher "
                              f"makes 32x32 images")
        from pipeline.flow import shifted_sigmas  # imports torch: only for a toy teacher

        sigmas = shifted_sigmas(cfg.steps)
        latent = (channels, 32, 32)
        parts: tuple[str, ...] = ("transformer",)
        if (folder / "autoencoder").exists():  # a latent toy teacher
            autoencoder = _read_json(folder / "autoencoder" / "config.json")
            grid = int(autoencoder.get("grid", 8))
            latent = (channels, grid, grid)
            parts = ("transformer", "autoencoder")
    else:
        from diffusers import FlowMatchEulerDiscreteScheduler

        from pipeline.teachers.zimage import zimage_sigmas

        vae = _read_json(folder / "vae" / "config.json")
        scale = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1) * patch
        if cfg.height % scale or cfg.width % scale:
            raise ConfigError(f"teacher.height/width {cfg.height}x{cfg.width}: must be "
                              f"multiples of {scale} for this Z-Image folder")
        latent = (channels, cfg.height * patch // scale, cfg.width * patch // scale)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            _read_json(folder / "scheduler" / "scheduler_config.json"))
        sigmas = zimage_sigmas(scheduler, cfg.steps, latent)
        parts = ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer",
                 "scheduler")
    fingerprint = files_fingerprint(folder, parts)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    return TeacherDescription(
        kind=cfg.kind, folder=folder, teacher_id=f"{cfg.kind}:{folder.name}@{digest}",
        sigmas=sigmas, latent_shape=latent, caption_dim=int(transformer["cap_feat_dim"]),
        fingerprint=fingerprint)
