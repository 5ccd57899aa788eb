"""Pydantic configs and manifests: the disk and API boundary of twostep. Data only."""

from schemas.config import CurateConfig, DistillConfig
from schemas.manifest import FileEntry, InputRef, Manifest, PromptSetManifest

__all__ = [
    "CurateConfig",
    "DistillConfig",
    "FileEntry",
    "InputRef",
    "Manifest",
    "PromptSetManifest",
]
