"""The teacher folder's weight checks (pipeline.teachers.weights) through describe_teacher:
headers only, nothing loaded, nothing unpickled. The CLI cases are in
tests/reliability/test_bad_inputs.py."""

from __future__ import annotations

import shutil

import pytest

from pipeline.errors import ArtifactError
from pipeline.teachers.describe import describe_teacher
from pipeline.toy.paths import TEACHER_DIR
from schemas.config import TeacherConfig


@pytest.fixture
def teacher(tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(TEACHER_DIR, folder)
    return folder


def _describe(folder):
    return describe_teacher(TeacherConfig(kind="toy", path=str(folder)))


def test_a_pickle_next_to_safetensors_is_ignored_not_read(teacher):
    (teacher / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"not even a pickle")
    assert _describe(teacher).latent_shape == (8, 8, 8)


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda data: data + b"\0" * 16, r"corrupt safetensors file \(\d+ bytes, its header"),
    (lambda data: data[:4], r"not a safetensors file \(4 bytes, no header\)"),
    (lambda data: b"\xff" * 64, "truncated or not a safetensors file"),
    (lambda data: data[:8] + b"{" * (len(data) - 8),
     r"not a safetensors file \(its header is not JSON\)"),
])
def test_a_damaged_safetensors_file_is_one_line(teacher, mangle, message):
    weights = teacher / "autoencoder" / "model.safetensors"
    weights.write_bytes(mangle(weights.read_bytes()))
    with pytest.raises(ArtifactError, match=rf"teacher.path: .*model.safetensors: {message}"):
        _describe(teacher)


def test_a_transformer_config_of_another_class_is_refused(teacher):
    config = teacher / "transformer" / "config.json"
    config.write_text(config.read_text().replace("ZImageTransformer2DModel", "FluxTransformer"))
    with pytest.raises(ArtifactError, match=r"_class_name is 'FluxTransformer', not "
                                            r"'ZImageTransformer2DModel'"):
        _describe(teacher)
