"""Z-Image Turbo through diffusers: ``ZImagePipeline.from_pretrained`` on a local folder
(Qwen3 text encoder, FLUX VAE, ``ZImageTransformer2DModel``), bf16 on GPU.

Conventions checked against ``ZImagePipeline.__call__`` by the tests: the transformer gets
``t = 1 - sigma`` and predicts ``x0 - eps`` (we negate it); the schedule is the pipeline's
(``linspace(1, 1/N, N)`` then the scheduler's shift, plus the final 0); VAE latents are
normalized as ``(z - shift_factor) * scaling_factor``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import ArtifactError
from pipeline.flow import transformer_velocity
from pipeline.teachers.base import PipelineComponents, TeacherAdapter

_REQUIRED = ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def zimage_sigmas(scheduler, steps: int, latent_shape: tuple[int, int, int]) -> list[float]:
    """``ZImagePipeline``'s ``steps + 1`` sigmas for latents ``(C, H, W)`` (resolution-dependent
    shift ``mu``), computed on a copy of ``scheduler``."""
    from diffusers.pipelines.z_image.pipeline_z_image import (
        calculate_shift,
        get_default_z_image_sigmas,
    )

    scheduler = copy.deepcopy(scheduler)
    cfg = scheduler.config
    seq_len = (latent_shape[1] // 2) * (latent_shape[2] // 2)
    mu = calculate_shift(seq_len, cfg.get("base_image_seq_len", 256),
                         cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                         cfg.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=mu)
    return [float(s) for s in scheduler.sigmas]


class ZImageTeacher(TeacherAdapter):
    name = "zimage"

    def __init__(self, pipe, device: str = "cpu") -> None:
        from pipeline.export.pipeline_twostep import caption_token_limit

        self.pipe = pipe
        self.device = torch.device(device)
        # ZImagePipeline's 512, or fewer where the transformer's rope table holds fewer
        self.max_sequence_length = caption_token_limit(pipe.transformer, 512)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu",
             dtype: torch.dtype | None = None) -> ZImageTeacher:
        """Load a local diffusers folder; ``dtype`` defaults to bf16 on CUDA, fp32 on CPU."""
        from diffusers import ZImagePipeline

        folder = Path(path)
        if not folder.is_dir():
            raise ArtifactError(f"Z-Image teacher folder not found: {folder}")
        missing = [name for name in _REQUIRED if not (folder / name).exists()]
        if missing:
            raise ArtifactError(f"{folder}: not a Z-Image diffusers folder, missing "
                                f"{', '.join(missing)}")
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            pipe = ZImagePipeline.from_pretrained(folder, dtype=dtype,
                                                  use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise ArtifactError(f"{folder}: cannot load the Z-Image pipeline: {exc}") from None
        pipe.vae.requires_grad_(False)  # frozen: a loss on decoded images trains the student
        return cls(pipe.to(device), device=device)

    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        with torch.inference_mode():
            embeds, _ = self.pipe.encode_prompt(
                list(prompts), device=self.device, do_classifier_free_guidance=False,
                max_sequence_length=self.max_sequence_length)
        return embeds

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor,
                 captions: list[torch.Tensor]) -> torch.Tensor:
        return transformer_velocity(self.pipe.transformer, x.to(self.device), sigma,
                                    [c.to(self.device) for c in captions])

    def schedule(self, steps: int, latent_shape: tuple[int, int, int]) -> list[float]:
        return zimage_sigmas(self.pipe.scheduler, steps, latent_shape)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        from pipeline.export.pipeline_twostep import latent_size

        config = self.pipe.transformer.config
        return (config.in_channels,
                *latent_size(height, width, self.pipe.vae_scale_factor, config))

    def decode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        z = x.to(self.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(z, return_dict=False)[0].float() + 1) / 2

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.inference_mode():
            z = vae.encode(images.to(self.device, vae.dtype) * 2 - 1).latent_dist.mode()
        return ((z.float() - vae.config.shift_factor) * vae.config.scaling_factor)

    @property
    def transformer(self) -> nn.Module:
        return self.pipe.transformer

    def take_transformer(self) -> nn.Module:
        model, self.pipe.transformer = self.pipe.transformer, None
        return model

    def pipeline_components(self) -> PipelineComponents:
        return PipelineComponents(text_encoder=self.pipe.text_encoder,
                                  tokenizer=self.pipe.tokenizer, vae=self.pipe.vae,
                                  text_encoding="qwen3")
