"""Teacher adapters: one interface over the toy teacher and Z-Image Turbo (diffusers)."""

from pipeline.teachers.base import SampleResult, TeacherAdapter, load_teacher

__all__ = ["SampleResult", "TeacherAdapter", "load_teacher"]
