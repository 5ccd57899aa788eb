"""The toy teacher adapter: a toy ``ZImageTransformer2DModel`` + MiniLM, in the latent space of
the folder's toy autoencoder (``autoencoder/``, the shipped teacher) or, without one, in
pixel space (3x32x32 in [-1, 1]). The shipped teacher has classifier-free guidance distilled
into it (``build.json`` ``guidance_distillation``), so like Z-Image Turbo it is sampled with
one velocity call per step and no guidance.

Prompts outside the toy vocabulary (see :func:`pipeline.toy.prompts.parse_prompt`) are still
encoded (MiniLM reads any text) and a warning names the unknown words, each once per adapter
(a sampling actor encodes hundreds of batches); ``strict=True`` turns that into a
:class:`~pipeline.errors.ConfigError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.errors import ArtifactError, ConfigError
from pipeline.flow import transformer_velocity
from pipeline.schedule import SHIFT, shifted_sigmas
from pipeline.teachers.base import PipelineComponents, TeacherAdapter
from pipeline.toy.autoencoder import ToyAutoencoder
from pipeline.toy.prompts import outside_vocabulary_warning, words_outside_vocabulary
from pipeline.toy.teacher import ASSET_DIR, decoded

log = logging.getLogger(__name__)


class ToyTeacher(TeacherAdapter):
    name = "toy"

    def __init__(self, model: ZImageTransformer2DModel, device: str = "cpu",
                 strict: bool = False, autoencoder: ToyAutoencoder | None = None) -> None:
        self.model = model.to(device).eval()
        self.autoencoder = (autoencoder.to(device).eval().requires_grad_(False)
                            if autoencoder is not None else None)
        self.device = torch.device(device)
        self.strict = strict
        self._encoder = None
        self._reported_unknown_words: set[str] = set()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu",
             strict: bool = False) -> ToyTeacher:
        folder = Path(path) if path else ASSET_DIR
        transformer = folder / "transformer"
        if not (transformer / "config.json").is_file():
            raise ArtifactError(
                f"{folder}: not a toy teacher folder (no transformer/config.json); build one "
                f"with `distill toy build-teacher`"
            )
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # one bar per Ray actor is noise
        try:
            model = ZImageTransformer2DModel.from_pretrained(
                transformer, use_safetensors=True, dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{transformer}: cannot load the toy teacher: {exc}") from None
        autoencoder = None
        if (folder / "autoencoder").exists():
            autoencoder = ToyAutoencoder.load(folder / "autoencoder")
        channels, side, _ = autoencoder.latent_shape if autoencoder else (3, 32, 32)
        if side % model.config.all_patch_size[0] or model.config.in_channels != channels:
            space = "its autoencoder's latent" if autoencoder else "pixel space (no autoencoder/)"
            raise ArtifactError(
                f"{transformer}: not a toy teacher for {space}: expected {channels} input "
                f"channels and a patch size dividing {side}, found "
                f"{model.config.in_channels} and {model.config.all_patch_size[0]}")
        return cls(model, device=device, strict=strict, autoencoder=autoencoder)

    def encode_prompts(self, prompts: list[str]) -> list[torch.Tensor]:
        unknown = words_outside_vocabulary(prompts)
        if unknown and self.strict:
            raise ConfigError(f"words outside the toy vocabulary: {', '.join(sorted(unknown))}")
        if unreported := unknown - self._reported_unknown_words:
            self._reported_unknown_words |= unreported
            log.warning("%s", outside_vocabulary_warning(unreported, "teacher"))
        return self._text_encoder().encode(prompts)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor,
                 captions: list[torch.Tensor]) -> torch.Tensor:
        caps = [c.to(self.device) for c in captions]
        return transformer_velocity(self.model, x.to(self.device), sigma.to(self.device), caps)

    def schedule(self, steps: int, latent_shape: tuple[int, int, int] | None = None,
                 ) -> list[float]:
        return shifted_sigmas(steps)

    def latent_shape(self, height: int = 32, width: int = 32) -> tuple[int, int, int]:
        if (height, width) != (32, 32):
            raise ConfigError(f"the toy teacher makes 32x32 images, not {height}x{width}")
        return self.autoencoder.latent_shape if self.autoencoder is not None else (3, 32, 32)

    def decode_differentiable(self, x: torch.Tensor) -> torch.Tensor:
        return (decoded(x.to(self.device).float(), self.autoencoder) + 1) / 2

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).float() * 2 - 1
        return self.autoencoder.encode(x) if self.autoencoder is not None else x

    @property
    def transformer(self) -> nn.Module:
        return self.model

    def take_transformer(self) -> nn.Module:
        model, self.model = self.model, None
        return model

    def _text_encoder(self):
        if self._encoder is None:
            from pipeline.toy.text_encoder import MiniLMTextEncoder

            self._encoder = MiniLMTextEncoder(device=self.device)
        return self._encoder

    def pipeline_components(self) -> PipelineComponents:
        if self.autoencoder is None:
            raise ArtifactError("a pixel-space toy teacher (no autoencoder/) has no decoder "
                                "to export; build a latent one (distill toy build-teacher)")
        from pipeline.toy.vae import ToyVAE

        encoder = self._text_encoder()
        return PipelineComponents(text_encoder=encoder.model, tokenizer=encoder.tokenizer,
                                  vae=ToyVAE.from_autoencoder(self.autoencoder).to(self.device),
                                  text_encoding="minilm")


class _FixedPatch(nn.Module):
    """The toy transformer with its own patch size bound: ``ZImagePipeline`` calls the
    transformer with the default ``patch_size=2``."""

    def __init__(self, model: ZImageTransformer2DModel) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, *args, **kwargs):
        return self.model(*args, patch_size=self.model.config.all_patch_size[0], **kwargs)


def toy_zimage_pipeline(teacher: ToyTeacher):
    """A ``diffusers.ZImagePipeline`` over the toy teacher's transformer (no VAE, no text
    encoder: call it with ``prompt_embeds`` from :meth:`ToyTeacher.encode_prompts`,
    ``height = width = 8 * side`` (the pipeline's latent is ``H / 8``; ``side`` is
    ``latent_shape()[1]``), ``guidance_scale=0`` and ``output_type="latent"``; the result is
    the final state, which :meth:`ToyTeacher.decode` turns into images).
    The stock sampling loop, used as the naive baseline in ``benchmarks/sample_teacher.py``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT,
                                                use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                          transformer=_FixedPatch(teacher.model))
