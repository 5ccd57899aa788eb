"""The toy autoencoder as a diffusers model, so that an exported toy pipeline loads its
decoder with ``DiffusionPipeline.from_pretrained`` like Z-Image's ``AutoencoderKL``.

It has the slice of ``AutoencoderKL``'s interface a text-to-image pipeline uses:
``config.scaling_factor`` (1) and ``config.shift_factor`` (0), because the toy latent is
normalised inside the autoencoder; ``decode(z, return_dict=False)[0]`` gives images in
[-1, 1]; ``config.block_out_channels`` has ``AutoencoderKL``'s meaning for its length only:
``2 ** (len - 1)`` is image side / latent side (32 / 8 = 4), which is how Z-Image's pipeline
finds its latent size.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pipeline.toy.autoencoder import AutoencoderConfig, ToyAutoencoder

IMAGE_SIDE = 32


class ToyVAE(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, grid: int = 8, channels: int = 8, width: int = 96,
                 block_out_channels: tuple[int, ...] = (32, 96, 96),
                 scaling_factor: float = 1.0, shift_factor: float = 0.0) -> None:
        super().__init__()
        self.autoencoder = ToyAutoencoder(AutoencoderConfig(grid=grid, channels=channels,
                                                            width=width))

    @classmethod
    def from_autoencoder(cls, autoencoder: ToyAutoencoder) -> ToyVAE:
        """A copy of ``autoencoder``'s weights and latent statistics."""
        c = autoencoder.config
        halvings = (IMAGE_SIDE // c.grid).bit_length() - 1
        vae = cls(grid=c.grid, channels=c.channels, width=c.width,
                  block_out_channels=(32, *([c.width] * halvings)))
        vae.autoencoder.load_state_dict(autoencoder.state_dict())
        return vae.eval()

    def check_image_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height x width`` is the toy world's 32x32: the decoder
        (and the toy transformers) learned no other size, and a convolutional decoder would
        silently decode any latent grid into an image of another size."""
        if (height, width) != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"{height}x{width} px: a toy model makes {IMAGE_SIDE}x{IMAGE_SIDE}"
                             f" images only (its decoder was trained at that size)")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, 3, 32, 32)`` in [-1, 1] -> normalised latents ``(N, C, G, G)``."""
        return self.autoencoder.encode(images)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Normalised latents -> images ``(N, 3, 32, 32)`` clamped to [-1, 1]."""
        images = self.autoencoder.decode(z.to(self.dtype)).clamp(-1, 1)
        return {"sample": images} if return_dict else (images,)
