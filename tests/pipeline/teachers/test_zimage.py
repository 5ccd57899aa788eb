"""The Z-Image adapter against ``ZImagePipeline.__call__`` on a miniature, locally built
Z-Image folder (tiny random transformer, VAE and Qwen3 text encoder; no download). Equal
latents from both prove the adapter's sigma, timestep and velocity conventions."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.teachers import load_teacher

PROMPTS = ["a red circle on the left", "a big blue square at the top"]


def test_schedule_is_the_design_grid(zimage_folder):
    teacher = load_teacher("zimage", str(zimage_folder))
    sigmas = teacher.schedule(8, teacher.latent_shape(32, 32))
    assert sigmas == pytest.approx([1, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0], abs=1e-4)
    assert teacher.schedule(2, (4, 16, 16)) == pytest.approx([1, 0.75, 0], abs=1e-6)


@pytest.mark.parametrize("steps", [8, 2])
def test_adapter_sampling_matches_the_diffusers_pipeline(zimage_folder, steps):
    from diffusers import ZImagePipeline

    teacher = load_teacher("zimage", str(zimage_folder))
    pipe = ZImagePipeline.from_pretrained(zimage_folder, torch_dtype=torch.float32)
    noise = torch.randn((2, *teacher.latent_shape(32, 32)),
                        generator=torch.Generator().manual_seed(steps))
    expected = pipe(prompt=list(PROMPTS), height=32, width=32, num_inference_steps=steps,
                    guidance_scale=0.0, latents=noise.clone(), output_type="latent").images
    result = teacher.sample(teacher.encode_prompts(list(PROMPTS)), noise.clone(), steps,
                            record_sigmas=(0.75,))
    assert (expected - noise).abs().mean() > 0.05  # the model really moved the latents
    torch.testing.assert_close(result.final, expected.float(), atol=1e-5, rtol=1e-5)
    assert result.recorded[0.75].shape == noise.shape


def test_decode_and_encode_shapes(zimage_folder):
    teacher = load_teacher("zimage", str(zimage_folder))
    latents = torch.randn(1, 4, 16, 16)
    images = teacher.decode(latents)
    assert images.shape == (1, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert teacher.encode_images(images).shape == (1, 4, 16, 16)
    # with gradients to the latent (for train_e2e.pixel_weight), the VAE itself frozen
    x = latents.clone().requires_grad_()
    differentiable = teacher.decode_differentiable(x)
    assert torch.allclose(differentiable.detach().clamp(0, 1), images, atol=1e-5)
    differentiable.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in teacher.pipe.vae.parameters())


def test_missing_or_malformed_folders_are_clear_errors(tmp_path, zimage_folder):
    with pytest.raises(ArtifactError, match="Z-Image teacher folder not found"):
        load_teacher("zimage", str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(ArtifactError, match="missing transformer, vae, text_encoder"):
        load_teacher("zimage", str(tmp_path / "half"))


def test_bf16_model_gets_float32_timesteps_like_the_pipeline(zimage_folder):
    teacher = load_teacher("zimage", str(zimage_folder), dtype=torch.bfloat16)
    seen = []
    model = teacher.transformer
    original = model.forward

    def spy(x, t, *args, **kwargs):
        seen.append(t)
        return original(x, t, *args, **kwargs)

    model.forward = spy
    caps = teacher.encode_prompts(list(PROMPTS))
    teacher.sample(caps, torch.randn(2, 4, 16, 16), 8)
    assert all(t.dtype == torch.float32 for t in seen)
    assert seen[1][0].item() == pytest.approx(1 - 0.9545, abs=1e-4)


def test_sizes_and_prompts_beyond_the_rope_tables_are_refused_or_cut(zimage_folder):
    """The miniature's position tables (axes_lens [64, 16, 16], 4 px a token) hold 64x64 px
    and 32 caption tokens; past them its transformer fails with an IndexError in the rope, in
    ZImagePipeline too. A size is refused in one line (the run's pre-flight and `generate`),
    a long prompt is cut as ZImagePipeline cuts at 512 tokens."""
    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.teachers.describe import describe_teacher

    teacher = load_teacher("zimage", str(zimage_folder))
    assert teacher.latent_shape(64, 64) == (4, 32, 32)
    with pytest.raises(ValueError, match=r"128x64 px is 32x16 image tokens, .* hold 16x16: at "
                                         r"most 64x64 px"):
        teacher.latent_shape(128, 64)
    cfg = load_config("smoke", ["teacher.kind=zimage", f"teacher.path={zimage_folder}",
                                "teacher.height=128", "teacher.width=128"])
    with pytest.raises(ConfigError, match=r"^teacher.height/width: 128x128 px is 32x32 image "
                                          r"tokens"):
        describe_teacher(cfg.teacher)
    long = " ".join(["a big blue square at the top"] * 20)
    caption = teacher.encode_prompts([long])[0]
    assert len(caption) == 32
    result = teacher.sample([caption], torch.randn(1, *teacher.latent_shape(32, 32)), 2)
    assert torch.isfinite(result.final).all()


def test_the_tokenizers_chat_template_is_part_of_the_teachers_identity(zimage_folder):
    """Z-Image's prompt encoding applies tokenizer/chat_template.jinja: editing it changes the
    caption features, so it must change sample_teacher's key (it was not fingerprinted)."""
    from pipeline.teachers.describe import describe_teacher
    from schemas.config import TeacherConfig

    template = zimage_folder / "tokenizer" / "chat_template.jinja"
    assert template.is_file()
    cfg = TeacherConfig(kind="zimage", path=str(zimage_folder), height=32, width=32)
    desc = describe_teacher(cfg, check_weights=False)
    assert "tokenizer/chat_template.jinja" in desc.fingerprint
