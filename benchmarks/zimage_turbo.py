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


def tiny_config() -> dict[str, object]:
    """``CONFIG`` scaled down (dim 64, 2 heads of 32, 2 layers, caption features 64)."""
    return {**CONFIG, "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2,
            "cap_feat_dim": 64, "axes_dims": [8, 12, 12]}
