"""The Z-Image adapter against ``ZImagePipeline.__call__`` on a miniature, locally built
Z-Image folder (tiny random transformer, VAE and Qwen3 text encoder; no download). Equal
latents from both prove the adapter's sigma, timestep and velocity conventions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.teachers import load_teacher

PROMPTS = ["a red circle on the left", "a big blue square at the top"]
WORDS = ("a an the red blue green big small circle square triangle on at in of left right top "
         "bottom center background white black gray user assistant").split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    # diffusers zero-initializes some output layers; random weights make the test meaningful.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.05)
                    + (1.0 if p.ndim == 1 else 0.0))


def build_miniature_zimage(folder: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                        unk_token="<unk>", chat_template=CHAT_TEMPLATE)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=600))
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6],
        axes_lens=[64, 16, 16])
    _randomize(transformer, 0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=False)
    ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   transformer=transformer).save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def zimage_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zimage-mini")
    build_miniature_zimage(folder)
    return folder


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


def test_missing_or_malformed_folders_are_clear_errors(tmp_path, zimage_folder):
    with pytest.raises(ArtifactError, match="Z-Image teacher folder not found"):
        load_teacher("zimage", str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(ArtifactError, match="missing transformer, vae, text_encoder"):
        load_teacher("zimage", str(tmp_path / "half"))
