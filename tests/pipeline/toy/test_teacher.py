from __future__ import annotations

import copy

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from pipeline.flow import transformer_velocity as velocity
from pipeline.toy.autoencoder import AutoencoderConfig, AutoencoderTrainConfig
from pipeline.toy.teacher import (
    X0_SIGMA_FLOOR,
    TeacherTrainConfig,
    new_teacher,
    sample,
    save_teacher,
    teacher_config,
    to_images,
    train_teacher,
    x0_velocity,
)


def test_short_training_run_saves_a_loadable_diffusers_folder(tmp_path):
    cfg = TeacherTrainConfig(minutes=10, max_steps=3, pool_prompts=50, pool_images=64,
                             batch=8, warmup=1, space="pixel", patch=4)
    build = train_teacher(cfg, log=lambda _: None)
    model, info = build.model, build.info
    assert build.autoencoder is None
    assert info["steps"] == 3 and info["final_loss"] > 0
    save_teacher(model, info, tmp_path)
    loaded = ZImageTransformer2DModel.from_pretrained(tmp_path / "transformer",
                                                      torch_dtype=torch.float32)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    rounded = copy.deepcopy(model).half().float()  # weights are stored as fp16
    caps = [torch.randn(7, 384)] * 2
    noise = torch.randn(2, 3, 32, 32)
    assert torch.allclose(sample(rounded, caps, noise, 2), sample(loaded, caps, noise, 2),
                          atol=1e-5)


def _tiny_config(**overrides) -> TeacherTrainConfig:
    return TeacherTrainConfig(dim=32, n_layers=1, n_heads=2, space="pixel", patch=4,
                              **overrides)


def test_adaln_zero_init_starts_at_zero_velocity_and_then_learns():
    torch.manual_seed(0)
    model = new_teacher(_tiny_config(init="adaln_zero"))
    caps = [torch.randn(5, 384), torch.randn(9, 384)]
    x, sigma = torch.randn(2, 3, 32, 32), torch.tensor([0.9, 0.3])
    assert torch.count_nonzero(velocity(model, x, sigma, caps)) == 0
    for block in model.layers:
        assert torch.count_nonzero(block.adaLN_modulation[0].weight) == 0
    # the default init is PyTorch's: not zero
    assert torch.count_nonzero(velocity(new_teacher(_tiny_config()), x, sigma, caps)) > 0
    build = train_teacher(_tiny_config(init="adaln_zero", minutes=10, max_steps=3,
                                       pool_prompts=40, pool_images=32, batch=8, warmup=1),
                          log=lambda _: None)
    trained, info = build.model, build.info
    assert info["steps"] == 3 and info["config"]["init"] == "adaln_zero"
    out = velocity(trained, x, sigma, caps)
    assert torch.isfinite(out).all() and torch.count_nonzero(out) > 0


def test_x0_parameterisation_reads_the_output_as_the_clean_image():
    torch.manual_seed(0)
    model = ZImageTransformer2DModel(**teacher_config(dim=32, n_layers=1, n_heads=2))
    caps = [torch.randn(6, 384)] * 3
    x = torch.randn(3, 3, 32, 32)
    sigma = torch.tensor([1.0, 0.5, 0.01])  # the last is below the floor
    # velocity() returns minus the raw output; x0_velocity() reads the raw output as x0_hat
    x0_hat = -velocity(model, x, sigma, caps)
    expected = (x - x0_hat) / sigma.clamp(min=X0_SIGMA_FLOOR).view(-1, 1, 1, 1)
    assert torch.allclose(x0_velocity(model, x, sigma, caps), expected, atol=1e-5)
    images = to_images(sample(model, caps, torch.randn(3, 3, 32, 32), 2, prediction="x0"), None)
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    assert images.abs().max() <= 1.0


def test_invalid_build_configs_fail_before_training():
    with pytest.raises(ValueError, match="space 'voxel'"):
        TeacherTrainConfig(space="voxel")
    with pytest.raises(ValueError, match="patch 3 must divide the latent side 8"):
        TeacherTrainConfig(patch=3)
    with pytest.raises(ValueError, match="head dim"):
        TeacherTrainConfig(dim=100, n_heads=4)
    with pytest.raises(ValueError, match="init 'dit': must be one of default, adaln_zero"):
        TeacherTrainConfig(init="dit")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TeacherTrainConfig(minuts=5)


def test_patch_and_autoencoder_seed_default_from_space_and_seed():
    assert TeacherTrainConfig().patch == 1 and TeacherTrainConfig(space="pixel").patch == 4
    assert TeacherTrainConfig(space="pixel", patch=8).patch == 8
    assert TeacherTrainConfig(seed=3).autoencoder_training.seed == 3
    given = AutoencoderTrainConfig(samples=64)
    assert TeacherTrainConfig(seed=3, autoencoder_training=given).autoencoder_training.seed == 3
    assert given.seed == 0  # copied, not changed
    explicit = AutoencoderTrainConfig(seed=9)
    assert TeacherTrainConfig(seed=3, autoencoder_training=explicit).autoencoder_training.seed == 9


def test_the_shipped_build_record_reads_back_as_the_same_config():
    import json

    from pipeline.toy.teacher import ASSET_DIR

    recorded = json.loads((ASSET_DIR / "build.json").read_text(encoding="utf-8"))["config"]
    assert TeacherTrainConfig.model_validate(recorded).model_dump(mode="json") == recorded


def test_latent_build_trains_the_autoencoder_and_loads_through_the_adapter(tmp_path):
    from pipeline.teachers.describe import describe_teacher
    from pipeline.teachers.toy import ToyTeacher
    from schemas.config import TeacherConfig

    cfg = TeacherTrainConfig(
        minutes=10, max_steps=2, pool_prompts=40, pool_images=48, batch=8, warmup=1, dim=32,
        n_layers=1, n_heads=2, autoencoder=AutoencoderConfig(channels=5, width=8),
        autoencoder_training=AutoencoderTrainConfig(samples=64, epochs=1, batch=32,
                                                    eval_renders=16, decoder_epochs=1))
    build = train_teacher(cfg, log=lambda _: None)
    assert build.model.config.in_channels == 5 and build.model.config.all_patch_size == (1,)
    assert set(build.info["autoencoder"]["phase_2"]["reconstruction_accuracy"]) == {
        "size", "color", "shape", "position", "background"}
    # the pool latents were normalised with the pool's own statistics
    assert not torch.equal(build.autoencoder.latent_std, torch.ones_like(
        build.autoencoder.latent_std))
    save_teacher(build.model, build.info, tmp_path / "teacher", autoencoder=build.autoencoder)
    assert not (tmp_path / "teacher.partial").exists()
    teacher = ToyTeacher.load(tmp_path / "teacher")
    assert teacher.latent_shape() == (5, 8, 8)
    noise = torch.randn(2, 5, 8, 8)
    final = teacher.sample(teacher.encode_prompts(["a red circle", "a shape"]), noise, 2).final
    images = teacher.decode(final)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert teacher.encode_images(images).shape == (2, 5, 8, 8)
    desc = describe_teacher(TeacherConfig(kind="toy", path=str(tmp_path / "teacher")))
    assert desc.latent_shape == (5, 8, 8)
    assert "autoencoder/model.safetensors" in desc.fingerprint

    # Rebuilding the same folder as a pixel teacher replaces it whole: no stale autoencoder.
    pixel = train_teacher(_tiny_config(minutes=10, max_steps=1, pool_prompts=40, pool_images=16,
                                       batch=4, warmup=1), log=lambda _: None)
    save_teacher(pixel.model, pixel.info, tmp_path / "teacher")
    assert not (tmp_path / "teacher" / "autoencoder").exists()
    assert ToyTeacher.load(tmp_path / "teacher").latent_shape() == (3, 32, 32)


def test_a_budget_the_autoencoder_or_the_pool_uses_up_fails_instead_of_an_untrained_teacher():
    """A build whose `minutes` end before flow matching could start once gave a teacher of zero
    training steps; now it stops with the way out, in latent space after the first epoch."""
    from pipeline.errors import ConfigError

    lines: list[str] = []
    latent = TeacherTrainConfig(
        minutes=1e-4, guidance=1.0, pool_prompts=40, pool_images=16, dim=32, n_layers=1,
        n_heads=2, autoencoder=AutoencoderConfig(channels=5, width=8),
        autoencoder_training=AutoencoderTrainConfig(samples=64, epochs=3, batch=32,
                                                    eval_renders=16, decoder_epochs=1))
    with pytest.raises(ConfigError, match=r"the autoencoder alone would take about .* minutes "
                       r"here \(1 of 3 epochs took .* s, then 1 decoder epoch\), past the "
                       r"0.0001 minutes of the build \(minutes 0.0001\): raise --set minutes"):
        train_teacher(latent, log=lines.append)
    assert lines == [next(line for line in lines if line.startswith("autoencoder epoch 1/3"))]
    pixel = _tiny_config(minutes=1e-4, guidance=1.0, pool_prompts=40, pool_images=16)
    with pytest.raises(ConfigError, match=r"minutes went to the training pool, leaving no time "
                       r"for flow matching in the 0.0001 minutes of the build \(minutes "
                       r"0.0001\): raise --set minutes \(44 by default\), or shorten the "
                       r"training pool \(pool_images\); nothing written$"):
        train_teacher(pixel, log=lambda _: None)


def test_a_teacher_that_does_not_fit_its_autoencoder_is_refused(tmp_path):
    from pipeline.errors import ArtifactError
    from pipeline.teachers.toy import ToyTeacher
    from pipeline.toy.autoencoder import ToyAutoencoder

    pixel = new_teacher(_tiny_config())  # 3 input channels, patch 4
    save_teacher(pixel, {}, tmp_path, autoencoder=ToyAutoencoder(AutoencoderConfig(width=8)))
    with pytest.raises(ArtifactError, match="expected 8 input channels"):
        ToyTeacher.load(tmp_path)


def test_guidance_distillation_learns_the_guided_velocity_of_the_frozen_reference():
    from pipeline.toy.teacher import distill_guidance

    torch.manual_seed(0)
    reference = new_teacher(_tiny_config())
    frozen = copy.deepcopy(reference)
    pool = torch.rand(16, 3, 32, 32) * 2 - 1
    caps = [torch.randn(6, 384), torch.randn(9, 384)]
    cap_ids = torch.arange(16).remainder(2).numpy()
    null = torch.randn(3, 384)
    x, sigma = torch.randn(4, 3, 32, 32), torch.tensor([0.95, 0.7, 0.4, 0.1])
    batch_caps = [caps[0], caps[1], caps[0], caps[1]]

    def guided(weight):
        v_cond = velocity(frozen, x, sigma, batch_caps)
        v_null = velocity(frozen, x, sigma, [null] * 4)
        return v_null + weight * (v_cond - v_null)

    cfg = _tiny_config(minutes=10, max_steps=40, batch=8, guidance=4.0, guidance_lr=3e-3)
    model, info = distill_guidance(reference, pool, cap_ids, caps, null, cfg,
                                   log=lambda _: None)
    assert info["steps"] == 40 and info["weight"] == 4.0 and info["null_prompt"] == "a shape"
    with torch.no_grad():
        target = guided(4.0)
        before = torch.nn.functional.mse_loss(velocity(frozen, x, sigma, batch_caps), target)
        after = torch.nn.functional.mse_loss(velocity(model, x, sigma, batch_caps), target)
    assert after < 0.7 * before, (before, after)
    # the reference is left as it was (it is the frozen source of the targets)
    for a, b in zip(reference.parameters(), frozen.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_build_ends_with_guidance_distillation_unless_the_weight_is_one():
    common = dict(minutes=10, max_steps=2, pool_prompts=40, pool_images=16, batch=4, warmup=1)
    guided = train_teacher(_tiny_config(**common), log=lambda _: None).info
    assert guided["steps"] == 2
    assert guided["guidance_distillation"]["steps"] == 2
    assert guided["guidance_distillation"]["weight"] == 2.0
    plain = train_teacher(_tiny_config(guidance=1.0, **common), log=lambda _: None).info
    assert "guidance_distillation" not in plain
    assert _tiny_config(guidance=1.0).flow_matching_minutes == 44.0
    assert _tiny_config().flow_matching_minutes == 39.0
    with pytest.raises(ValueError, match="guidance 0.5 must be >= 1"):
        _tiny_config(guidance=0.5)
    with pytest.raises(ValueError, match="guidance_minutes 5.0 must be above 0 and below"):
        _tiny_config(minutes=5)


def test_warmup_0_means_no_warm_up():
    """The schema allows 0; the loop divided by it (ZeroDivisionError after the whole
    autoencoder and pool)."""
    build = train_teacher(_tiny_config(minutes=10, max_steps=2, pool_prompts=40, pool_images=16,
                                       batch=4, warmup=0, guidance=1.0), log=lambda _: None)
    assert build.info["steps"] == 2 and build.info["final_loss"] > 0
