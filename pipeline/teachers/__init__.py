"""Teacher adapters: one interface over the toy teacher and Z-Image Turbo (diffusers)."""

from pipeline.teachers.base import TeacherAdapter
from pipeline.teachers.load import load_teacher

__all__ = ["TeacherAdapter", "load_teacher"]
