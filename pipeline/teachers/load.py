"""Loading a teacher adapter by kind (kept apart from :mod:`pipeline.teachers.base`, which the
adapters import)."""

from __future__ import annotations

import torch

from pipeline.teachers.base import TeacherAdapter


def load_teacher(kind: str, path: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None) -> TeacherAdapter:
    """``kind``: ``toy`` (the shipped toy teacher, or the folder ``path``) or ``zimage``
    (a local Z-Image Turbo diffusers folder at ``path``)."""
    if kind == "toy":
        from pipeline.teachers.toy import ToyTeacher

        return ToyTeacher.load(path, device=device)
    if kind == "zimage":
        from pipeline.teachers.zimage import ZImageTeacher

        if path is None:
            raise ValueError("the zimage teacher needs the path of a local diffusers folder")
        return ZImageTeacher.load(path, device=device, dtype=dtype)
    raise ValueError(f"unknown teacher kind {kind!r} (kinds: toy, zimage)")
