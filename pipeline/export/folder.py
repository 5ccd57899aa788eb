"""Writing and checking an exported pipeline folder.

Layout (a diffusers pipeline folder)::

    model_index.json        "_class_name": ["pipeline_twostep", "TwoStepPipeline"], components,
                            boundary_sigma, text_encoding, default_height/width
    pipeline_twostep.py     the pipeline class (diffusers, transformers and torch only)
    transformer/            G1 (step 1, sigma 1): ZImageTransformer2DModel, safetensors shards
    transformer_2/          G2 (step 2, sigma boundary_sigma); absent for a shared student
    text_encoder/ tokenizer/ vae/   the teacher's (for the toy: MiniLM and the toy autoencoder)
    scheduler/              FlowMatchEulerDiscreteScheduler, shift 1: the sigmas given are used
    twostep.json            what was exported from where (read by ``distill generate``)
    README.md, grid.png     the model card

The folder is written beside its final name and renamed into place, so a folder under the
final name is always complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from pipeline.errors import ArtifactError
from pipeline.store import replace_local_dir
from pipeline.student.model import TwoStepStudent
from pipeline.teachers.base import PipelineComponents, TeacherAdapter

PIPELINE_FILE = "pipeline_twostep.py"
PIPELINE_CLASS = "TwoStepPipeline"
INFO_FILE = "twostep.json"
MODEL_INDEX = "model_index.json"
WEIGHT_SUFFIXES = (".safetensors",)
REFUSED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
KNOWN_LIBRARIES = ("diffusers", "transformers")
COMPONENT_SHIM = "twostep_component"
FORMAT_VERSION = 1
"""Version of the export's layout and ``twostep.json``."""


def pipeline_source() -> Path:
    """The pipeline code file that every export carries."""
    return Path(__file__).resolve().parent / PIPELINE_FILE


def build_pipeline(student: TwoStepStudent, components: PipelineComponents, height: int,
                   width: int):
    """A :class:`TwoStepPipeline` in memory over ``student``'s generators."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from pipeline.export.pipeline_twostep import TwoStepPipeline

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                                use_dynamic_shifting=False)
    return TwoStepPipeline(scheduler=scheduler, vae=components.vae,
                           text_encoder=components.text_encoder,
                           tokenizer=components.tokenizer, transformer=student.g1,
                           transformer_2=student.g2, boundary_sigma=student.sigma_mid,
                           text_encoding=components.text_encoding, default_height=height,
                           default_width=width)


def write_pipeline(student: TwoStepStudent, teacher: TeacherAdapter, out: Path, *,
                   dtype: torch.dtype, max_shard_size: str, height: int, width: int,
                   info: dict[str, Any], card: str | None = None,
                   extra_files: dict[str, bytes] | None = None) -> None:
    """Write the folder ``out`` (see the module docstring) in ``dtype``; ``info`` goes to
    ``twostep.json``, ``card`` to ``README.md``, ``extra_files`` (e.g. ``grid.png``) beside
    them. Replaces an existing ``out`` only once the new folder is complete."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipe = build_pipeline(student, teacher.pipeline_components(), height, width)
    pipe.to(dtype)
    pipe.save_pretrained(partial, safe_serialization=True, max_shard_size=max_shard_size)
    index = json.loads((partial / MODEL_INDEX).read_text())
    index["_class_name"] = [PIPELINE_FILE.removesuffix(".py"), PIPELINE_CLASS]
    index.pop("_name_or_path", None)
    for name, value in index.items():
        if isinstance(value, list) and value[0] not in (None, *KNOWN_LIBRARIES) \
                and not name.startswith("_"):
            index[name] = _component_shim(partial / name, *value)
    (partial / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(pipeline_source(), partial / PIPELINE_FILE)
    (partial / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (partial / "README.md").write_text(card, encoding="utf-8")
    for name, data in (extra_files or {}).items():
        (partial / name).write_bytes(data)
    check_export(partial)
    replace_local_dir(partial, out)


def _component_shim(folder: Path, module: str, class_name: str) -> list[str]:
    """A component whose class lives outside diffusers and transformers (the toy decoder):
    diffusers loads such a class only from a code file in the component's folder (with
    ``trust_remote_code``), so the folder gets one that imports it from its module."""
    (folder / f"{COMPONENT_SHIM}.py").write_text(
        f'"""Loads {class_name} from {module} (the twostep package must be installed)."""\n\n'
        f"from {module} import {class_name}\n\n__all__ = [{class_name!r}]\n")
    return [COMPONENT_SHIM, class_name]


def check_export(folder: Path) -> dict[str, Any]:
    """``folder`` is a complete twostep export: returns its ``twostep.json``. Raises an
    :class:`ArtifactError` naming the path otherwise (not an export, a component missing, a
    weight file that is not safetensors)."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such folder")
    if not (folder / INFO_FILE).is_file():
        hint = " (a teacher folder? use --teacher-path)" if (folder / MODEL_INDEX).is_file() \
            else ""
        raise ArtifactError(f"{folder}: not a twostep export (no {INFO_FILE}){hint}")
    documents = {}
    for name in (MODEL_INDEX, INFO_FILE):
        try:
            documents[name] = json.loads((folder / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{folder / name}: unreadable export metadata ({exc})") from None
        if not isinstance(documents[name], dict):
            raise ArtifactError(f"{folder / name}: not a JSON object; export the model again "
                                f"(distill run --only export --force)")
    index, info = documents[MODEL_INDEX], documents[INFO_FILE]
    if info.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{folder}: {INFO_FILE} has format_version "
                            f"{info.get('format_version')!r}, this twostep reads "
                            f"{FORMAT_VERSION}")
    if index.get("_class_name") != [PIPELINE_FILE.removesuffix(".py"), PIPELINE_CLASS]:
        raise ArtifactError(f"{folder}: not a twostep export ({MODEL_INDEX} does not name "
                            f"{PIPELINE_FILE})")
    if not (folder / PIPELINE_FILE).is_file():
        raise ArtifactError(f"{folder / PIPELINE_FILE}: the pipeline's code file is missing "
                            f"from the export; export the model again")
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2:
            raise ArtifactError(f"{folder / MODEL_INDEX}: component {name!r} is {value!r}, "
                                f"not [library, class]; export the model again")
        if value[0] is None:
            continue
        part = folder / name
        if not part.is_dir() or not any(part.iterdir()):
            raise ArtifactError(f"{part}: component {name} missing from the export")
        for file in part.rglob("*"):
            if file.suffix in REFUSED_WEIGHTS:
                raise ArtifactError(f"{file}: weights must be safetensors (pickle-based "
                                    f"weight files are refused)")
    return info


def load_exported(folder: Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """The exported pipeline, loaded the way any user loads it, in ``dtype`` (default: the
    dtype it was exported in)."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    info = check_export(folder)
    diffusers_logging.disable_progress_bar()
    dtype = dtype or getattr(torch, str(info.get("dtype", "float32")), None)
    kwargs = {"dtype": dtype} if isinstance(dtype, torch.dtype) else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True,
                                                 local_files_only=True, use_safetensors=True,
                                                 **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as exc:
        raise ArtifactError(f"{folder}: cannot load the exported pipeline: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def recorded_teacher(store):
    """The teacher (a :class:`~schemas.config.TeacherConfig`) that the latest finished
    ``train_e2e`` of the workspace ``store`` recorded."""
    from pipeline.stage import latest_result
    from schemas.config import TeacherConfig
    from schemas.manifest import StudentCheckpointManifest

    manifest, _ = latest_result(store, "train_e2e", StudentCheckpointManifest)
    return TeacherConfig.model_validate(manifest.run_config.get("teacher", {}))


def workspace_student_pipeline(store, teacher_cfg=None, device: str = "cpu",
                               height: int | None = None, width: int | None = None):
    """The latest finished ``train_e2e`` student of the workspace ``store`` as a
    :class:`TwoStepPipeline` in memory: the same pipeline an export of it loads as, with the
    weights the workspace's latest evaluate scored (EMA by default). ``teacher_cfg`` (a
    :class:`~schemas.config.TeacherConfig`) defaults to the teacher the run recorded; a given
    one must be the teacher it was distilled from."""
    from pipeline.stage import latest_result, read_latest
    from pipeline.student.load import load_student
    from pipeline.teachers import load_teacher
    from pipeline.teachers.describe import OTHER_TEACHER_HINT, describe_teacher, same_teacher
    from schemas.manifest import EvalReportManifest, StudentCheckpointManifest

    manifest, stage_dir = latest_result(store, "train_e2e", StudentCheckpointManifest)
    recorded = teacher_cfg is None
    if recorded:
        teacher_cfg = recorded_teacher(store)
    try:
        teacher_id = describe_teacher(teacher_cfg).teacher_id
    except ArtifactError as exc:
        if not recorded:
            raise
        raise ArtifactError(f"{exc} (the teacher folder the run recorded: if it has moved, "
                            f"pass --teacher-path)") from None
    if not same_teacher(manifest.teacher_id, teacher_id):
        raise ArtifactError(f"{store.uri(stage_dir)}: the student was distilled from "
                            f"{manifest.teacher_id}, the teacher given is {teacher_id} (pass "
                            f"that teacher's --teacher and --teacher-path; "
                            f"{OTHER_TEACHER_HINT})")
    weights = "ema"
    if read_latest(store, "evaluate") is not None:
        evaluation, _ = latest_result(store, "evaluate", EvalReportManifest)
        weights = evaluation.config.get("weights", weights)
    teacher = load_teacher(teacher_cfg.kind, teacher_cfg.path, device=device)
    student = load_student(store.local_path(stage_dir), manifest, teacher, weights)
    pipe = build_pipeline(student, teacher.pipeline_components(),
                          height or teacher_cfg.height, width or teacher_cfg.width)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(teacher.device)
