"""The toy teacher: a tiny ``diffusers.ZImageTransformer2DModel`` conditioned on MiniLM token
features, trained with flow matching, in one of two spaces (``TeacherTrainConfig.space``):

- ``latent`` (the shipped teacher): the normalised ``(8, 8, 8)`` latent of the toy
  autoencoder (:mod:`pipeline.toy.autoencoder`), patch 1; the autoencoder is trained first and
  ships beside the transformer in ``autoencoder/``;
- ``pixel``: the image itself (3x32x32, values in [-1, 1]), patch 4.

The build ends with guidance distillation (:func:`distill_guidance`): classifier-free guidance
with the all-unnamed prompt as the unconditional branch is baked into the weights, so the
teacher is sampled, like Z-Image Turbo, with one velocity call per step.

The flow-matching conventions, the transformer call, Euler sampling on the shifted schedule and
the EMA update come from :mod:`pipeline.flow`, as for the student and Z-Image.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ZImageTransformer2DModel
from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.flow import ema_update, euler, noised, transformer_output, transformer_velocity
from pipeline.schedule import SHIFT, shift_sigma, shifted_sigmas
from pipeline.toy.autoencoder import (
    AutoencoderConfig,
    AutoencoderTrainConfig,
    ToyAutoencoder,
    TrainingTooSlow,
    train_autoencoder,
)
from pipeline.toy.paths import TEACHER_DIR
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.render import render, sample_scene
from schemas.base import StrictModel

ASSET_DIR = TEACHER_DIR
PATCH = 4
TOY_TEACHER_CONFIG: dict[str, object] = dict(
    all_patch_size=(PATCH,), all_f_patch_size=(1,), in_channels=3, dim=128, n_layers=4,
    n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=384, axes_dims=[8, 12, 12],
    axes_lens=[96, 16, 16],
)


def teacher_config(patch: int = PATCH, dim: int = 128, n_layers: int = 4,
                   n_heads: int = 4, in_channels: int = 3) -> dict[str, object]:
    """A toy transformer config; the RoPE axes split the head dim 1/4 caption index, 3/8 rows,
    3/8 columns (as in ``TOY_TEACHER_CONFIG`` for the defaults)."""
    head = dim // n_heads
    if head * n_heads != dim or head % 8:
        raise ValueError(f"dim {dim} / {n_heads} heads must give a head dim divisible by 8")
    rows = (head * 3 // 8) // 2 * 2
    return {**TOY_TEACHER_CONFIG, "all_patch_size": (patch,), "dim": dim, "n_layers": n_layers,
            "n_heads": n_heads, "n_kv_heads": n_heads, "in_channels": in_channels,
            "axes_dims": [head - 2 * rows, rows, rows]}


X0_SIGMA_FLOOR = 0.05


def x0_velocity(model: ZImageTransformer2DModel, x: torch.Tensor, sigma: torch.Tensor,
                caps: list[torch.Tensor]) -> torch.Tensor:
    """Experimental x0 parameterisation (Li & He 2025, "Back to Basics"): the transformer's
    output is read as the clean image ``x0_hat`` and ``v = (x - x0_hat) / sigma`` (sigma
    floored at 0.05, as they floor 1 - t). Not what the shipped teacher or the Z-Image
    pipeline use; ``research/toy_teacher_scaling.py`` compares it with
    :func:`~pipeline.flow.transformer_velocity`."""
    x0_hat = transformer_output(model, x, sigma, caps)
    return (x - x0_hat) / sigma.clamp(min=X0_SIGMA_FLOOR).view(-1, 1, 1, 1)


VELOCITY_FNS = {"v": transformer_velocity, "x0": x0_velocity}


@torch.no_grad()
def init_adaln_zero(model: ZImageTransformer2DModel) -> ZImageTransformer2DModel:
    """DiT's initialisation (Peebles & Xie 2023, "adaLN-Zero"), applied to the diffusers class,
    which keeps PyTorch's default ``nn.Linear`` init: every linear Xavier-uniform with zero
    bias, the timestep MLP N(0, 0.02), and the modulation and output layers zero, so each
    modulated block starts as the identity (gate ``tanh(0) = 0``, scale ``1 + 0``) and the
    model starts by predicting ``0``. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    for layer in model.t_embedder.mlp:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=0.02)
    for block in [*model.noise_refiner, *model.layers]:
        torch.nn.init.zeros_(block.adaLN_modulation[0].weight)
        torch.nn.init.zeros_(block.adaLN_modulation[0].bias)
    for final in model.all_final_layer.values():
        torch.nn.init.zeros_(final.adaLN_modulation[1].weight)
        torch.nn.init.zeros_(final.adaLN_modulation[1].bias)
        torch.nn.init.zeros_(final.linear.weight)
        torch.nn.init.zeros_(final.linear.bias)
    return model


INITS = {"default": lambda model: model, "adaln_zero": init_adaln_zero}


@torch.inference_mode()
def sample(model: ZImageTransformer2DModel, caps: list[torch.Tensor], noise: torch.Tensor,
           steps: int, prediction: str = "v") -> torch.Tensor:
    """Euler sampling from ``noise`` (``(B, C, H, W)``, sigma = 1) to the final state in the
    teacher's space (unclamped; :func:`to_images` turns it into images)."""
    velocity_fn = VELOCITY_FNS[prediction]
    return euler(lambda x, sigma: velocity_fn(model, x, sigma, caps), noise,
                 shifted_sigmas(steps)).final


def decoded(x: torch.Tensor, autoencoder: ToyAutoencoder | None) -> torch.Tensor:
    """Final states ``(B, C, H, W)`` -> images ``(B, 3, 32, 32)`` on the [-1, 1] scale,
    unclamped and differentiable: decoded by the autoencoder for a latent teacher, the state
    itself for a pixel teacher."""
    if autoencoder is not None:
        return autoencoder.decode(x.to(autoencoder.latent_mean.device))
    return x


@torch.no_grad()
def to_images(x: torch.Tensor, autoencoder: ToyAutoencoder | None) -> torch.Tensor:
    """:func:`decoded`, clamped to [-1, 1]."""
    return decoded(x, autoencoder).clamp(-1, 1)


class TeacherTrainConfig(StrictModel):
    """A toy teacher build (``distill toy build-teacher --set FIELD=VALUE`` sets any field)."""

    minutes: float = Field(44.0, gt=0, description="Time budget of the whole build "
                           "(autoencoder included).")
    max_steps: int = Field(100_000, ge=1, description="Step cap of each training phase.")
    batch: int = Field(48, ge=1, description="Batch size.")
    lr: float = Field(2e-3, ge=0, description="Peak AdamW learning rate.")
    warmup: int = Field(300, ge=0, description="Linear warmup steps.")
    ema: float = Field(0.999, ge=0, lt=1, description="EMA decay of the weights kept.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    pool_prompts: int = Field(20_000, ge=1, description="Prompts drawn for the training pool.")
    pool_images: int = Field(50_000, ge=1, description="Renders in the training pool.")
    seed: int = Field(0, description="Seed of the pool, the initialisation and the noise.")
    space: str = Field("latent", description="latent (the toy autoencoder's latent, trained "
                       "first) or pixel (3x32x32).")
    patch: int | None = Field(None, validate_default=True, description="Patch size on the "
                              "latent grid or in pixels (default: 1 latent, 4 pixel).")
    dim: int = Field(128, description="Transformer width.")
    n_layers: int = Field(4, ge=1, description="Main transformer layers.")
    n_heads: int = Field(4, ge=1, description="Attention heads (head dim a multiple of 8).")
    device: str = Field("cpu", description="Training device.")
    prediction: str = Field("v", description="What the transformer predicts: v, or x0 "
                            "(experimental; the shipped teacher predicts v).")
    init: str = Field("default", description="Weight initialisation: default (PyTorch's) or "
                      "adaln_zero (DiT's, see init_adaln_zero).")
    # Guidance distillation (see distill_guidance): the classifier-free-guidance weight baked
    # into the teacher in the last guidance_minutes of the budget; 1 skips the phase.
    guidance: float = Field(2.0, description="Classifier-free guidance weight distilled into "
                            "the teacher (1: no guidance phase).")
    guidance_minutes: float = Field(5.0, description="Minutes of the budget for guidance "
                                    "distillation (the last ones).")
    guidance_lr: float = Field(3e-4, gt=0, description="Learning rate of guidance "
                               "distillation.")
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig,
                                           description="Latent space: the autoencoder's shape.")
    autoencoder_training: AutoencoderTrainConfig = Field(
        default_factory=AutoencoderTrainConfig, validate_default=True,
        description="Latent space: how the autoencoder is trained first (its seed, unless "
        "set, is the build's seed).")

    @field_validator("patch")
    @classmethod
    def _space_default_patch(cls, patch: int | None, info: ValidationInfo) -> int:
        if patch is None:
            return 1 if info.data.get("space") == "latent" else PATCH
        return patch

    @field_validator("autoencoder_training")
    @classmethod
    def _autoencoder_seed_follows_seed(cls, cfg: AutoencoderTrainConfig,
                                       info: ValidationInfo) -> AutoencoderTrainConfig:
        if "seed" in cfg.model_fields_set or "seed" not in info.data:
            return cfg
        return cfg.model_copy(update={"seed": info.data["seed"]})

    @model_validator(mode="after")
    def _check(self) -> TeacherTrainConfig:
        if self.space not in SPACES:
            raise ValueError(f"space {self.space!r}: must be one of {', '.join(SPACES)}")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r}: must be one of {', '.join(INITS)}")
        if self.prediction not in VELOCITY_FNS:
            raise ValueError(f"prediction {self.prediction!r}: must be one of "
                             f"{', '.join(VELOCITY_FNS)}")
        side = self.autoencoder.grid if self.space == "latent" else 32
        if self.patch < 1 or side % self.patch:
            raise ValueError(f"patch {self.patch} must divide the {self.space} side {side}")
        teacher_config(self.patch, self.dim, self.n_layers, self.n_heads)  # fail before training
        if self.guidance < 1:
            raise ValueError(f"guidance {self.guidance} must be >= 1 (1: no guidance phase)")
        if self.guidance > 1 and not 0 < self.guidance_minutes < self.minutes:
            raise ValueError(f"guidance_minutes {self.guidance_minutes} must be above 0 and "
                             f"below the build's {self.minutes} minutes (or guidance 1: no "
                             f"guidance phase)")
        return self

    @property
    def flow_matching_minutes(self) -> float:
        """The part of ``minutes`` before the guidance phase (all of it without one)."""
        return self.minutes - (self.guidance_minutes if self.guidance > 1 else 0.0)


SPACES = ("latent", "pixel")
# The toy grammar's all-unnamed prompt: the unconditional branch of classifier-free guidance.
NULL_PROMPT = "a shape"
GUIDANCE_WARMUP = 50
GUIDANCE_EMA = 0.99


@dataclass
class ToyTeacherBuild:
    """What :func:`train_teacher` returns: the EMA transformer, the autoencoder of a latent
    teacher (``None`` in pixel space) and the build record for ``build.json``."""

    model: ZImageTransformer2DModel
    autoencoder: ToyAutoencoder | None
    info: dict[str, object]


def pool_texts(cfg: TeacherTrainConfig) -> list[str]:
    """The distinct prompt texts of the training pool, sorted (the caption index order)."""
    return sorted({p.text for p in generate_prompts(cfg.pool_prompts, seed=cfg.seed + 1000)})


def image_pool(cfg: TeacherTrainConfig, log: Callable[[str], None],
               caps: list[torch.Tensor] | None = None):
    """Training pool: ``(pool_images, 3, 32, 32)`` renders in [-1, 1], the caption index of
    each, and the MiniLM features of every distinct prompt (deterministic in ``cfg.seed``).
    ``caps`` may be given precomputed, in :func:`pool_texts` order."""
    rng = random.Random(cfg.seed)
    prompts = generate_prompts(cfg.pool_prompts, seed=cfg.seed + 1000)
    texts = sorted({p.text for p in prompts})
    if caps is None:
        from pipeline.toy.text_encoder import MiniLMTextEncoder

        caps = MiniLMTextEncoder().encode(texts)
    if len(caps) != len(texts):
        raise ValueError(f"{len(caps)} caption features for {len(texts)} pool prompts")
    index = {t: i for i, t in enumerate(texts)}
    images = np.empty((cfg.pool_images, 32, 32, 3), dtype=np.uint8)
    cap_ids = np.empty(cfg.pool_images, dtype=np.int64)
    for i in range(cfg.pool_images):
        p = prompts[rng.randrange(len(prompts))]
        images[i] = render(sample_scene(p.attributes, rng.getrandbits(63)))
        cap_ids[i] = index[p.text]
    log(f"pool: {len(texts)} distinct prompts, {cfg.pool_images} renders")
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return x0, cap_ids, caps


def new_teacher(cfg: TeacherTrainConfig) -> ZImageTransformer2DModel:
    """An untrained toy transformer of ``cfg``'s shape, initialised as ``cfg.init`` says."""
    channels = cfg.autoencoder.channels if cfg.space == "latent" else 3
    model = ZImageTransformer2DModel(**teacher_config(cfg.patch, cfg.dim, cfg.n_layers,
                                                     cfg.n_heads, in_channels=channels))
    return INITS[cfg.init](model)


def train_teacher(cfg: TeacherTrainConfig, log: Callable[[str], None] = print,
                  ) -> ToyTeacherBuild:
    """Build a toy teacher within ``cfg.minutes`` in all (or ``max_steps`` per phase): in
    latent space the autoencoder first (a fixed number of epochs: both phases about 11
    minutes on 2 CPUs by default), then flow matching on the encoded pool, then (``guidance``
    above 1) guidance distillation for the last ``guidance_minutes``."""
    from pipeline.toy.text_encoder import MiniLMTextEncoder

    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    flow_matching_end = start + cfg.flow_matching_minutes * 60
    autoencoder, ae_info = None, None
    if cfg.space == "latent":
        try:
            autoencoder, ae_info = train_autoencoder(cfg.autoencoder, cfg.autoencoder_training,
                                                     log, deadline=flow_matching_end)
        except TrainingTooSlow as exc:
            raise ConfigError(
                f"build-teacher: the autoencoder alone would take about "
                f"{exc.projected_seconds / 60:.1f} minutes here ({exc.measured}), past the "
                f"{_flow_matching_budget(cfg)}") from None
    encoder = MiniLMTextEncoder()
    x0_pool, cap_ids, caps = image_pool(cfg, log, caps=encoder.encode(pool_texts(cfg)))
    if autoencoder is not None:
        x0_pool = autoencoder.fit_latent_statistics(x0_pool)
    if time.perf_counter() >= flow_matching_end:  # else flow matching would run no step
        raise ConfigError(
            f"build-teacher: {(time.perf_counter() - start) / 60:.1f} minutes went to the "
            f"{'autoencoder and the ' if autoencoder is not None else ''}training pool, "
            f"leaving no time for flow matching in the {_flow_matching_budget(cfg)}")
    torch.manual_seed(cfg.seed)
    model, info = train_flow_matching(new_teacher(cfg), x0_pool, cap_ids, caps, cfg, log,
                                      start=start, minutes=cfg.flow_matching_minutes)
    if cfg.guidance > 1:
        log(f"guidance distillation: weight {cfg.guidance}, {cfg.guidance_minutes} minutes")
        model, info["guidance_distillation"] = distill_guidance(
            model, x0_pool, cap_ids, caps, encoder.encode([NULL_PROMPT])[0], cfg, log)
        info["train_seconds"] = round(time.perf_counter() - start, 1)
    if ae_info is not None:
        info["autoencoder"] = ae_info
    return ToyTeacherBuild(model, autoencoder, info)


def _flow_matching_budget(cfg: TeacherTrainConfig) -> str:
    """The end of the messages above: the minutes flow matching has, how they came about, and
    the way out of a budget too small for the work before it."""
    if cfg.guidance > 1:
        source = (f"the build has before guidance distillation (minutes {cfg.minutes:g}, "
                  f"guidance_minutes {cfg.guidance_minutes:g})")
    else:
        source = f"of the build (minutes {cfg.minutes:g})"
    autoencoder = ("the autoencoder (autoencoder_training.epochs, autoencoder_training.samples) "
                   "or " if cfg.space == "latent" else "")
    return (f"{cfg.flow_matching_minutes:g} minutes {source}: raise --set minutes (44 by "
            f"default), or shorten {autoencoder}the training pool (pool_images); nothing written")


VelocityFn = Callable[[ZImageTransformer2DModel, torch.Tensor, torch.Tensor,
                       list[torch.Tensor]], torch.Tensor]
# (x_sigma, sigma, x0, eps, captions) -> the velocity to regress, (B, C, H, W)
VelocityTarget = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           list[torch.Tensor]], torch.Tensor]


def data_velocity(x: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor,
                  caps: list[torch.Tensor]) -> torch.Tensor:
    """The flow-matching target ``v = eps - x0``."""
    return eps - x0


def train_flow_matching(
    model: ZImageTransformer2DModel,
    x0_pool: torch.Tensor,
    cap_ids: np.ndarray,
    caps: list[torch.Tensor],
    cfg: TeacherTrainConfig,
    log: Callable[[str], None] = print,
    velocity_fn: VelocityFn | None = None,
    start: float | None = None,
    checkpoint: Callable[[int, ZImageTransformer2DModel], None] | None = None,
    checkpoint_every: int = 0,
    minutes: float | None = None,
):
    """The flow-matching loop: batches from ``x0_pool`` ``(N, C, H, W)`` with captions
    ``caps[cap_ids[i]]``, AdamW with warm-up and cosine decay over ``minutes`` (default
    ``cfg.minutes``, counted from ``start``), grad clipping and an EMA copy, on ``cfg.device``
    (bf16 autocast on CUDA). ``velocity_fn`` defaults to the one ``cfg.prediction`` names;
    ``checkpoint(step, ema)`` is called every ``checkpoint_every`` steps. Returns
    (EMA model, info)."""
    return _regress_velocity(
        model, x0_pool, cap_ids, caps, cfg, log, target=data_velocity, lr=cfg.lr,
        warmup=cfg.warmup, ema_decay=cfg.ema, minutes=cfg.minutes if minutes is None else minutes,
        seed=cfg.seed, velocity_fn=velocity_fn or VELOCITY_FNS[cfg.prediction], start=start,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every)


def distill_guidance(
    reference: ZImageTransformer2DModel,
    x0_pool: torch.Tensor,
    cap_ids: np.ndarray,
    caps: list[torch.Tensor],
    null_caption: torch.Tensor,
    cfg: TeacherTrainConfig,
    log: Callable[[str], None] = print,
    start: float | None = None,
):
    """Guidance distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models",
    stage one; Z-Image Turbo too has guidance built in and is sampled without): a copy of
    ``reference`` learns, at the flow-matching noise levels, the classifier-free-guided
    velocity of the frozen ``reference``,

        v* = v(x, sigma, null) + w (v(x, sigma, c) - v(x, sigma, null)),  w = cfg.guidance,

    with ``null_caption`` ``(L, 384)`` the unconditional branch (the toy world's all-unnamed
    prompt, :data:`NULL_PROMPT`), for ``cfg.guidance_minutes``. The result samples like the
    guided reference in one velocity call per step. Returns (EMA model, info)."""
    device = torch.device(cfg.device)
    reference = reference.to(device).eval().requires_grad_(False)
    null = null_caption.to(device)
    velocity_fn = VELOCITY_FNS[cfg.prediction]

    def guided(x, sigma, x0, eps, batch_caps):
        with torch.no_grad():
            v_cond = velocity_fn(reference, x, sigma, batch_caps)
            v_null = velocity_fn(reference, x, sigma, [null] * len(batch_caps))
        return v_null + cfg.guidance * (v_cond - v_null)

    student = copy.deepcopy(reference).requires_grad_(True)
    model, info = _regress_velocity(
        student, x0_pool, cap_ids, caps, cfg, log, target=guided, lr=cfg.guidance_lr,
        warmup=GUIDANCE_WARMUP, ema_decay=GUIDANCE_EMA, minutes=cfg.guidance_minutes,
        seed=cfg.seed + 1, velocity_fn=velocity_fn, start=start, label="guidance distillation")
    return model, {"weight": cfg.guidance, "null_prompt": NULL_PROMPT, "steps": info["steps"],
                   "final_loss": info["final_loss"], "seconds": info["train_seconds"],
                   "lr": cfg.guidance_lr}


def _training_batch(x0_pool: torch.Tensor, cap_ids: np.ndarray, caps: list[torch.Tensor],
                    batch: int, gen: torch.Generator):
    """``batch`` pool images ``x0`` with fresh noise ``eps`` at random ``sigma``, noised to
    ``x``: ``(x, sigma, x0, eps, captions)``. Half the batch at shifted sigmas (where the
    8-step sampler spends its steps), half uniform, so the low-noise steps that make edges
    crisp get enough training too."""
    device = x0_pool.device
    idx = torch.randint(0, len(x0_pool), (batch,), generator=gen)
    x0 = x0_pool[idx.to(device)]
    eps = torch.randn(x0.shape, generator=gen).to(device)
    u = torch.rand(batch, generator=gen)
    shifted = torch.rand(batch, generator=gen) < 0.5
    sigma = torch.where(shifted, shift_sigma(u, SHIFT), u).to(device)
    return noised(x0, eps, sigma), sigma, x0, eps, [caps[int(i)] for i in cap_ids[idx.numpy()]]


def _regress_velocity(
    model: ZImageTransformer2DModel,
    x0_pool: torch.Tensor,
    cap_ids: np.ndarray,
    caps: list[torch.Tensor],
    cfg: TeacherTrainConfig,
    log: Callable[[str], None],
    *,
    target: VelocityTarget,
    lr: float,
    warmup: int,
    ema_decay: float,
    minutes: float,
    seed: int,
    velocity_fn: VelocityFn,
    start: float | None,
    checkpoint: Callable[[int, ZImageTransformer2DModel], None] | None = None,
    checkpoint_every: int = 0,
    label: str = "step",
):
    """One velocity-regression loop for both teacher phases: MSE between ``velocity_fn`` on
    ``x_sigma = (1 - sigma) x0 + sigma eps`` and ``target(x_sigma, sigma, x0, eps, caps)``,
    for ``minutes`` from ``start`` or ``cfg.max_steps`` steps."""
    start = time.perf_counter() if start is None else start
    device = torch.device(cfg.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = model.to(device).train()
    x0_pool = x0_pool.to(device)
    caps = [c.to(device) for c in caps]
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    deadline = start + minutes * 60
    step, losses = 0, []
    while step < cfg.max_steps and time.perf_counter() < deadline:
        frac = (time.perf_counter() - start) / (minutes * 60)
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0  # warmup 0: none
        step_lr = lr * ramp * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = step_lr
        x, sigma, x0, eps, batch_caps = _training_batch(x0_pool, cap_ids, caps, cfg.batch, gen)
        with autocast:
            wanted = target(x, sigma, x0, eps, batch_caps).float()
            pred = velocity_fn(model, x, sigma, batch_caps)
        loss = torch.nn.functional.mse_loss(pred.float(), wanted)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema.parameters(), model.parameters(), ema_decay, step)
        losses.append(loss.item())
        step += 1
        if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            checkpoint(step, ema)
        if step % 200 == 0:
            log(f"{label} {step}: loss {np.mean(losses[-200:]):.4f} lr {step_lr:.2e} "
                f"({time.perf_counter() - start:.0f} s)")
    return ema.eval().cpu(), {
        "steps": step, "final_loss": float(np.mean(losses[-200:])) if losses else None,
        "train_seconds": round(time.perf_counter() - start, 1),
        "config": cfg.model_dump(mode="json"), "torch": torch.__version__}


def save_teacher(model: ZImageTransformer2DModel, info: dict[str, object], folder: Path,
                 autoencoder: ToyAutoencoder | None = None) -> None:
    """Diffusers folder (``transformer/config.json`` + fp16 safetensors), the autoencoder of a
    latent teacher in ``autoencoder/``, and ``build.json``. Written to a sibling folder first
    and swapped in whole, so an interrupted save never leaves a teacher that looks finished
    (nor a stale ``autoencoder/`` beside a new pixel teacher)."""
    import json
    import shutil

    from pipeline.store import replace_local_dir

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # fp16 on disk halves the shipped size (~4 MB); adapters load it back as fp32.
    copy.deepcopy(model).to(torch.float16).save_pretrained(partial / "transformer",
                                                           safe_serialization=True)
    # A model loaded from disk records its source path; a shipped config must not.
    config_file = partial / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("_name_or_path", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if autoencoder is not None:
        autoencoder.save(partial / "autoencoder")
    (partial / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    replace_local_dir(partial, folder)


def attribute_accuracy(model: ZImageTransformer2DModel, steps: int, n_prompts: int = 500,
                       seed: int = 4242, autoencoder: ToyAutoencoder | None = None,
                       ) -> dict[str, float]:
    """Per-attribute accuracy (toy feature network) of ``steps``-step samples on ``n_prompts``
    fresh toy prompts, each attribute scored over the prompts that name it (pass the
    autoencoder of a latent teacher)."""
    from pipeline.toy.features import load_feature_net
    from pipeline.toy.metrics import named_attribute_accuracy
    from pipeline.toy.text_encoder import MiniLMTextEncoder

    prompts = generate_prompts(n_prompts, seed=seed)
    caps = MiniLMTextEncoder().encode([p.text for p in prompts])
    shape = autoencoder.latent_shape if autoencoder is not None else (3, 32, 32)
    noise = torch.randn((n_prompts, *shape), generator=torch.Generator().manual_seed(seed))
    images = torch.cat([to_images(sample(model, caps[i : i + 100], noise[i : i + 100], steps),
                                  autoencoder) for i in range(0, n_prompts, 100)])
    return named_attribute_accuracy(prompts, load_feature_net().predict(images))
