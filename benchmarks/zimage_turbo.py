"""The Z-Image Turbo transformer's shape, for the device checks (``device_check.py``,
``device_check_student.py``): they build it with random weights (no download; timings and
memory do not depend on the weights).

``CONFIG`` is Tongyi-MAI/Z-Image-Turbo ``transformer/config.json`` (6.15 B parameters; the
diffusers class ``ZImageTransformer2DModel``). ``tiny_config()`` keeps its structure (patch 2,
16 latent channels, two refiner layers, the RoPE axes split 1/4 : 3/8 : 3/8 of the head) at a
size a CPU runs in a second, for the checks' CPU dry runs.
"""

from __future__ import annotations

CONFIG: dict[str, object] = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30,
    n_refiner_layers=2, n_heads=30, n_kv_heads=30, norm_eps=1e-05, qk_norm=True,
    cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0, axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
VAE_SCALE = 8
"""Pixels per latent cell of Z-Image's VAE (a 1024x1024 image is a 16x128x128 latent)."""
CAPTION_TOKENS = 128
"""Caption length the checks use (a typical prompt through Qwen3, chat template included)."""


QWEN3_CONFIG: dict[str, object] = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
    rope_theta=1_000_000.0, rms_norm_eps=1e-06, tie_word_embeddings=True)
"""Z-Image Turbo's text encoder (Qwen3-4B) ``text_encoder/config.json``, the fields that set its
size and speed."""
VAE_CONFIG: dict[str, object] = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False)
"""Z-Image Turbo's VAE (FLUX's ``AutoencoderKL``) ``vae/config.json``."""


def random_pipeline(tiny: bool, device: str, dtype):
    """A ``ZImagePipeline`` of Z-Image Turbo's shape with random weights (or a scaled-down one
    when ``tiny``) and a whitespace word-level tokenizer: end-to-end timings of the real sizes
    without a download."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    words = "a red blue circle square on the left right big small user assistant".split()
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<|im_start|>", "<|im_end|>",
                                         *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
        chat_template="{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} "
                      "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> "
                      "assistant {% endif %}")
    text = dict(QWEN3_CONFIG, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                num_attention_heads=2, num_key_value_heads=1, head_dim=32) if tiny \
        else QWEN3_CONFIG
    vae = dict(VAE_CONFIG, block_out_channels=(8, 16, 16, 16), norm_num_groups=4,
               layers_per_block=1) if tiny else VAE_CONFIG
    transformer = tiny_config() if tiny else CONFIG
    transformer = {**transformer, "cap_feat_dim": text["hidden_size"]}
    with torch.device(device):
        parts = dict(text_encoder=Qwen3Model(Qwen3Config(**{**text, "vocab_size": len(vocab)})),
                     vae=AutoencoderKL(**vae), transformer=ZImageTransformer2DModel(**transformer))
    for module in parts.values():
        module.to(dtype).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, tokenizer=tokenizer, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_config() -> dict[str, object]:
    """``CONFIG`` scaled down (dim 64, 2 heads of 32, 2 layers, caption features 64)."""
    return {**CONFIG, "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
            "cap_feat_dim": 64, "axes_dims": [8, 12, 12]}
