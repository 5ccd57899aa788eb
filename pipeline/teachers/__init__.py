"""Teacher adapters: one interface over the toy teacher and Z-Image Turbo (diffusers).

``TeacherAdapter`` and ``load_teacher`` are imported on first use (PEP 562), so that
``pipeline.teachers.describe`` (cache keys, pre-flight checks) does not import torch."""

from typing import TYPE_CHECKING

__all__ = ["TeacherAdapter", "load_teacher"]

if TYPE_CHECKING:
    from pipeline.teachers.base import TeacherAdapter
    from pipeline.teachers.load import load_teacher


def __getattr__(name: str):
    if name == "TeacherAdapter":
        from pipeline.teachers.base import TeacherAdapter

        return TeacherAdapter
    if name == "load_teacher":
        from pipeline.teachers.load import load_teacher

        return load_teacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
