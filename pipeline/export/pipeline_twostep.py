"""A distilled 2-step text-to-image pipeline (twostep), loadable with diffusers alone.

This file is copied into every exported folder and named in its ``model_index.json``
(``"_class_name": ["pipeline_twostep", "TwoStepPipeline"]``), so

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    image = pipe("a red circle", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]

works with diffusers, transformers and torch only (it imports nothing from twostep; a toy
export's decoder class comes from the twostep package).

Sampling: two Euler steps of the flow ``x_sigma = (1 - sigma) x0 + sigma eps`` on the trained
schedule ``1 -> boundary_sigma -> 0``. Step 1 runs ``transformer`` (G1) at sigma 1, step 2
runs ``transformer_2`` (G2) at ``boundary_sigma`` (or ``transformer`` again when the student
shares one model), the switch following diffusers' Wan 2.2 pipelines (``transformer``,
``transformer_2``, a boundary in the pipeline config). The scheduler is a
``FlowMatchEulerDiscreteScheduler`` with ``shift=1`` and no dynamic shifting, so the sigmas it
is given are the sigmas it uses. No guidance: it is distilled into the weights.

Text encoding: ``qwen3`` (Z-Image's chat-templated Qwen3 hidden states, as ``ZImagePipeline``)
or ``minilm`` (the toy world's MiniLM token features, padding removed).
"""

from __future__ import annotations

import torch
from diffusers import ZImagePipeline
from diffusers.pipelines.z_image.pipeline_output import ZImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

MINILM_MAX_TOKENS = 64
CAPTION_PAD_MULTIPLE = 32
"""Z-Image's transformer pads each caption to a multiple of this many tokens (``SEQ_MULTI_OF``
in diffusers' transformer_z_image.py)."""


def caption_token_limit(transformer, requested: int) -> int:
    """The most caption tokens, at most ``requested``, that ``transformer`` can place: the
    caption, padded to :data:`CAPTION_PAD_MULTIPLE`, takes rope positions ``1 .. L`` on the
    first axis and the image's frame position ``L + 1`` follows, all within that axis's table
    (``axes_lens[0]``). Z-Image Turbo's 1536 holds the pipeline's 512 tokens; a smaller model's
    table would be indexed past its end by a long prompt (an IndexError deep in the rope)."""
    axes_lens = transformer.config.axes_lens
    fits = (axes_lens[0] - 2) // CAPTION_PAD_MULTIPLE * CAPTION_PAD_MULTIPLE
    if fits < 1:
        raise ValueError(f"this transformer's caption position table (axes_lens[0] = "
                         f"{axes_lens[0]}) holds no padded caption of {CAPTION_PAD_MULTIPLE} "
                         f"tokens and the image after it")
    return min(requested, fits)


def check_image_tokens(height: int, width: int, pixels_per_token: int,
                       axes_lens: list[int]) -> None:
    """Raise ``ValueError`` when a ``height x width`` image has more tokens a side than the
    transformer's rope tables hold (``axes_lens[1]`` rows, ``axes_lens[2]`` columns; Z-Image
    Turbo: 512 at 16 px a token, 8192 px): past them the transformer fails with an IndexError
    in its rope, as ``ZImagePipeline`` does."""
    rows, cols = height // pixels_per_token, width // pixels_per_token
    if rows > axes_lens[1] or cols > axes_lens[2]:
        raise ValueError(f"{height}x{width} px is {rows}x{cols} image tokens, but this "
                         f"transformer's position tables (axes_lens {list(axes_lens)}) hold "
                         f"{axes_lens[1]}x{axes_lens[2]}: at most "
                         f"{axes_lens[1] * pixels_per_token}x{axes_lens[2] * pixels_per_token} px")


def latent_size(height: int, width: int, vae_scale_factor: int,
                transformer_config) -> tuple[int, int]:
    """The latent's ``(h, w)`` of a ``height x width`` image as ``ZImagePipeline`` computes it
    (sizes multiples of ``vae_scale_factor * 2``), once the size is checked against the
    multiple and the transformer's position tables (:func:`check_image_tokens`)."""
    scale = vae_scale_factor * 2
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of {scale}, got "
                         f"{height}x{width}")
    check_image_tokens(height, width, vae_scale_factor * transformer_config.all_patch_size[0],
                       transformer_config.axes_lens)
    return 2 * (height // scale), 2 * (width // scale)


class TwoStepPipeline(ZImagePipeline):
    """Z-Image's pipeline with the distilled 2-step sampler and a second transformer."""

    model_cpu_offload_seq = "text_encoder->transformer->transformer_2->vae"
    _optional_components = ["transformer_2"]

    def __init__(self, scheduler, vae, text_encoder, tokenizer, transformer,
                 transformer_2=None, boundary_sigma: float = 0.75,
                 text_encoding: str = "qwen3", default_height: int = 1024,
                 default_width: int = 1024) -> None:
        super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                         tokenizer=tokenizer, transformer=transformer)
        self.register_modules(transformer_2=transformer_2)
        self.register_to_config(boundary_sigma=boundary_sigma, text_encoding=text_encoding,
                                default_height=default_height, default_width=default_width)

    @property
    def sigmas(self) -> list[float]:
        """The trained schedule: ``[1, boundary_sigma, 0]``."""
        return [1.0, float(self.config.boundary_sigma), 0.0]

    def encode_prompt(self, prompt, device=None, do_classifier_free_guidance=False,
                      negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                      max_sequence_length: int = 512):
        """Caption features, one ``(L_i, D)`` tensor per prompt, and an empty negative list
        (guidance is distilled in)."""
        if self.config.text_encoding != "minilm":
            # A copy: ZImagePipeline writes the chat-templated text back into the list.
            prompts = None if prompt is None else [prompt] if isinstance(prompt, str) \
                else list(prompt)
            limit = caption_token_limit(self.transformer, max_sequence_length)
            embeds, _ = super().encode_prompt(prompts, device=device,
                                              do_classifier_free_guidance=False,
                                              prompt_embeds=prompt_embeds,
                                              max_sequence_length=limit)
            return embeds, []
        if prompt_embeds is not None:
            return prompt_embeds, []
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        device = device or self._execution_device
        tokens = self.tokenizer(prompts, padding=True, truncation=True,
                                max_length=MINILM_MAX_TOKENS, return_tensors="pt").to(device)
        hidden = self.text_encoder(**tokens).last_hidden_state.float()
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        return [hidden[i, :n] for i, n in enumerate(lengths)], []

    def _velocity(self, model, latents: torch.Tensor, t: torch.Tensor,
                  embeds: list[torch.Tensor]) -> torch.Tensor:
        # The transformer takes 1 - sigma, computed from the scheduler's timestep as
        # ZImagePipeline does, runs at its own patch size and predicts x0 - eps = -v.
        timestep = (1000 - t.expand(latents.shape[0])) / 1000
        out = model(list(latents.to(model.dtype).unsqueeze(2).unbind(0)), timestep,
                    [e.to(model.dtype) for e in embeds],
                    patch_size=model.config.all_patch_size[0], return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 2,
                 guidance_scale: float = 0.0, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None,
                 prompt_embeds: list[torch.Tensor] | None = None, output_type: str = "pil",
                 return_dict: bool = True, max_sequence_length: int = 512):
        """Generate images in 2 steps. ``generator``: one, or one per image (image ``i``'s
        noise then depends only on ``generator[i]``); ``latents``: the noise ``(B, C, h, w)``
        itself; ``output_type``: ``pil``, ``np``, ``pt`` or ``latent``."""
        if num_inference_steps != 2:
            raise ValueError(f"this pipeline was distilled for 2 steps (schedule "
                             f"{self.sigmas}); num_inference_steps={num_inference_steps} "
                             f"is not supported")
        if guidance_scale:
            raise ValueError("guidance is distilled into this model: use guidance_scale=0")
        height = height or self.config.default_height
        width = width or self.config.default_width
        check_size = getattr(self.vae, "check_image_size", None)  # a decoder of one size (toy)
        if check_size is not None:
            check_size(height, width)
        latent_h, latent_w = latent_size(height, width, self.vae_scale_factor,
                                         self.transformer.config)
        device = self._execution_device
        embeds, _ = self.encode_prompt(prompt, device=device, prompt_embeds=prompt_embeds,
                                       max_sequence_length=max_sequence_length)
        embeds = [e for e in embeds for _ in range(num_images_per_prompt)]
        shape = (len(embeds), self.transformer.config.in_channels, latent_h, latent_w)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device,
                                   dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents of shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device, torch.float32)
        self.scheduler.set_timesteps(sigmas=self.sigmas[:-1], device=device)
        self.scheduler.set_begin_index(0)
        models = [self.transformer, self.transformer_2 or self.transformer]
        for model, t in zip(models, self.scheduler.timesteps, strict=True):
            v = self._velocity(model, latents, t, embeds)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
        if output_type == "latent":
            image = latents
        else:
            z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor \
                + self.vae.config.shift_factor
            image = self.image_processor.postprocess(self.vae.decode(z, return_dict=False)[0],
                                                     output_type=output_type)
        self.maybe_free_model_hooks()
        return ZImagePipelineOutput(images=image) if return_dict else (image,)
