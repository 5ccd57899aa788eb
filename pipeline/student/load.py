"""Loading a trained student from a ``train_init`` / ``train_e2e`` stage folder."""

from __future__ import annotations

from pathlib import Path

from pipeline.student.checkpoint import load_student_weights
from pipeline.student.model import TwoStepStudent
from pipeline.teachers.base import TeacherAdapter
from schemas.config import LoraConfig
from schemas.manifest import StudentCheckpointManifest


def load_student(folder: Path, manifest: StudentCheckpointManifest, teacher: TeacherAdapter,
                 weights: str = "ema") -> TwoStepStudent:
    """The student of a finished training stage (``weights``: ``ema`` or ``student``), built on
    the teacher's architecture in the teacher's dtype, in eval mode on the teacher's device. A
    ``decoupled_lora`` student comes back with its adapters fused into two plain transformers
    (:meth:`TwoStepStudent.merged`), as evaluation scores it and an export ships it."""
    dtype = next(teacher.transformer.parameters()).dtype  # bf16 on GPU, like the teacher
    lora = LoraConfig.model_validate(manifest.lora) if manifest.lora else None
    student = TwoStepStudent.from_teacher(teacher.transformer, manifest.parameterization,
                                          manifest.sigma_mid, dtype=dtype, lora=lora)
    load_student_weights(student, Path(folder) / f"{weights}.safetensors")
    return student.merged().to(teacher.device).eval().requires_grad_(False)
