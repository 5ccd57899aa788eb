"""Which files of an image folder are its images (no torch: the evaluate stage's cache key
reads the same list that FID loads)."""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def image_files(folder: Path) -> list[Path]:
    """The PNG/JPEG/WebP files of a folder (any case of suffix, not its subfolders), sorted:
    what :func:`pipeline.evaluation.real.load_image_folder` reads."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
