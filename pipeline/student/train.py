"""The training loop of both phases, run once per worker: one Ray task for a single worker,
one Ray Train worker per DDP rank for several (``launch.py``).

Phase 1 (per-step init): ``x_mid, x0 = student(eps, c, x_mid_in = x_mid_teacher)``;
``loss = d(x_mid, x_mid_teacher) + d(x0, x0_teacher)``: G1 learns ``eps -> x_mid_teacher`` and
G2 ``x_mid_teacher -> x0_teacher``, each alone.

Phase 2 (end to end): ``x_mid, x0 = student(eps, c)`` chained (``x_mid`` detached unless
``end_to_end``). Generator loss ``adv_weight * L_adv(D(x0)) + step1_weight * d(x_mid,
x_mid_teacher) + final_weight * d(x0, x0_teacher) + feature_weight * f(x0, x0_teacher) +
pixel_weight * mse(decode(x0), decode(x0_teacher))`` (``f``:
:func:`~pipeline.student.discriminator.feature_distance` of the discriminator backbone's
features, both re-noised alike; ``decode``: the teacher's frozen decoder, differentiable);
with ``adv_weighting: adaptive`` the adversarial weight is recomputed every step so that its
gradient on ``x0`` is ``adv_weight`` times the final regression's
(:func:`~pipeline.student.losses.adaptive_adversarial_gradient`); then a discriminator step
on real (teacher ``x0``, or ground-truth renders for ``gan_real: data``) versus
``x0.detach()``, with optional lazy R1. Separate AdamW optimizers; an EMA of the student.
With ``adv_weight: 0`` there is no discriminator: no backbone copy, no discriminator step (40%
of a toy phase-2 step), no draws for it. Without the perceptual term the student trains
exactly as with the adversarial term weighted 0 (tested); with it (it builds the frozen
backbone it reads, no heads) its re-noising draws are the generator's next ones, no longer
interleaved with a discriminator step's, so the run differs from such a one draw for draw.

Data parallel: each rank reads its share of the shards (:class:`TeacherSampleReader`); the
student is parallelized by :func:`pipeline.student.parallel.parallelize` (``ddp``: wrapped in
``DistributedDataParallel``; ``fsdp2``: every transformer block sharded); the discriminator
heads (tiny, and R1 needs double backward, which DDP does not support) average their gradients
with one all-reduce.
Random draws (discriminator sigmas and noise, data seeds) are made for the global batch on
every rank from the same generator and strided per rank, as the reader splits samples. The
data split depends on the number of workers (shards by rank), so ``num_workers`` is part of
the cache key and a checkpoint resumes only with the world size that wrote it.

Memory: a worker holds the teacher transformer only as its student (G1, or the LoRA base) and,
in phase 2 with a discriminator, as its backbone (a frozen copy, or for ``decoupled_lora`` the LoRA
base itself with adapters off); the EMA covers trainable parameters only.

Determinism and resume: data position is ``step * local_batch`` samples of a deterministic
stream, and the checkpoint (:mod:`pipeline.student.checkpoint`, consolidated tensors through
``torch.distributed.checkpoint.state_dict``) holds the trainable weights, EMA, optimizer states
and the generator state, so a resumed run continues with the losses of an uninterrupted one
(same device, threads, strategy and number of workers; the driver refuses others).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator

from pipeline.errors import TwostepError
from pipeline.flow import noised
from pipeline.samples.reader import TeacherSampleReader, collate_samples
from pipeline.student import checkpoint as ckpt
from pipeline.student.discriminator import (
    BackboneFeatures,
    Discriminator,
    feature_distance,
    frozen_copy,
)
from pipeline.student.ema import ParamEMA
from pipeline.student.losses import (
    adaptive_adversarial_gradient,
    adversarial_ramp,
    discriminator_accuracy,
    discriminator_adversarial,
    generator_adversarial,
    r1_penalty,
    regression,
    twice_differentiable_attention,
)
from pipeline.student.model import TwoStepStudent
from pipeline.student.parallel import parallelize
from pipeline.tracking import RunTracker
from schemas.base import StrictModel
from schemas.config import (
    LoraConfig,
    OptimizerConfig,
    TeacherConfig,
    TrainE2EConfig,
    TrainInitConfig,
)
from schemas.manifest import SampleShard

STATUS_FILE = "train_status.json"
LOSSES_FILE = "losses.jsonl"
HELDOUT_FILE = "heldout_discriminator.jsonl"
"""Phase 2: the discriminator's accuracy on held-out teacher vs student samples over training
(:meth:`Worker.heldout_discrimination`), one JSON record per evaluation."""
FINAL_FILES = ("student.safetensors", "ema.safetensors", "transformer_config.json",
               "train_state.json")


class NonFiniteLoss(TwostepError):
    pass


class StoppedEarly(TwostepError):
    pass


class TrainJob(StrictModel):
    """Everything a worker needs, typed all the way to the Ray Train worker (pickled with the
    pydantic sections inside)."""

    phase: Literal[1, 2]
    config: TrainInitConfig | TrainE2EConfig = Field(description="The stage's section.")
    teacher: TeacherConfig
    store_root: str
    samples_dir: str = Field(description="sample_teacher stage folder, relative to the store.")
    train_shards: list[SampleShard]
    eval_shards: list[SampleShard]
    sigma_mid: float
    parameterization: Literal["decoupled", "shared", "decoupled_lora"]
    lora: LoraConfig | None = Field(None, description="decoupled_lora: the adapters.")
    out_dir: str = Field(description="Local path of this stage's folder.")
    init_weights: str | None = Field(None, description="Phase 2: the phase-1 weights file.")
    mlflow_uri: str | None = None
    mlflow_artifacts: str | None = Field(
        None, description="Artifact location of a newly created experiment.")
    mlflow_experiment: str = "twostep"
    run_name: str = "train"
    tags: dict[str, str] = Field(default_factory=dict)
    use_gpu: bool = Field(False, description="Resolved by the driver, which placed the "
                          "workers accordingly.")

    @model_validator(mode="after")
    def _phase_matches_section(self) -> TrainJob:
        wanted = TrainInitConfig if self.phase == 1 else TrainE2EConfig
        if type(self.config) is not wanted:
            raise ValueError(f"phase {self.phase} needs a {wanted.__name__}")
        if (self.parameterization == "decoupled_lora") != (self.lora is not None):
            raise ValueError("lora is given exactly when parameterization is decoupled_lora")
        return self


def _optimizer(params, cfg: OptimizerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                             weight_decay=cfg.weight_decay)


def scheduled_lr(cfg: OptimizerConfig, step: int, total: int) -> float:
    """The learning rate of 0-based ``step`` of ``total``: linear warm-up over
    ``warmup_steps``, then ``lr`` (constant) or ``lr * (r + (1 - r) (1 + cos(pi t)) / 2)``
    (cosine, ``r = min_lr_ratio``, ``t`` from 0 after the warm-up to 1 at ``total``), or
    (cooldown) ``lr`` until the last ``n = round(cooldown_fraction * (total - warmup))`` steps
    and ``lr * (1 - (1 - r) k / (n + 1))`` on the ``k``-th of them (``k`` = 1 .. n: the last
    step still moves, a little above ``r`` of the rate)."""
    warm = cfg.warmup_steps
    if step < warm:
        return cfg.lr * ((step + 1) / warm)  # the product of before: bit-identical runs
    if cfg.schedule == "constant" or total <= warm:
        return cfg.lr
    r = cfg.min_lr_ratio
    if cfg.schedule == "cooldown":
        n = max(1, round(cfg.cooldown_fraction * (total - warm)))
        k = step - (total - n) + 1
        return cfg.lr if k <= 0 else cfg.lr * (1.0 - (1.0 - r) * k / (n + 1))
    t = (step - warm) / (total - warm)
    return cfg.lr * (r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t)))


def warmup_outlasts_run(cfg: OptimizerConfig, total: int, field: str) -> str | None:
    """A one-line warning when the warm-up of ``field`` (e.g. ``train_init.optimizer``) does
    not end before the last of ``total`` steps, so the learning rate never or only at the end
    reaches ``lr``; None otherwise. (A deliberately short run on a preset is legitimate.)"""
    if cfg.warmup_steps < total:
        return None
    return (f"{field}.warmup_steps ({cfg.warmup_steps}) >= steps ({total}): the learning rate "
            f"peaks at {total / cfg.warmup_steps:.0%} of lr ({cfg.lr:g}) at the last step; "
            f"lower the warm-up for a run this short")


def _set_lr(opt: torch.optim.Optimizer, cfg: OptimizerConfig, step: int, total: int) -> None:
    for group in opt.param_groups:
        group["lr"] = scheduled_lr(cfg, step, total)


def _clip(params, cfg: OptimizerConfig) -> float:
    """Clip to ``grad_clip`` (None: measure only); the global norm, also over FSDP2 shards."""
    params = [p for p in params if p.grad is not None]
    limit = float("inf") if cfg.grad_clip is None else cfg.grad_clip
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _all_reduce_mean(values: dict[str, float], world: int, device) -> dict[str, float]:
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


def _average_grads(params, world: int) -> None:
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


class Worker:
    """One rank's training state and loop."""

    def __init__(self, job: TrainJob, rank: int, world: int) -> None:
        self.job, self.rank, self.world = job, rank, world
        self.cfg = cfg = job.config
        self.out = Path(job.out_dir)
        use_gpu = job.use_gpu and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu \
            else torch.device("cpu")
        self.autocast = dict(device_type=self.device.type, dtype=torch.bfloat16,
                             enabled=use_gpu and cfg.bf16)
        from pipeline.teachers import load_teacher

        # The teacher's VAE/decoder stays (sample grids, gan_real=data); its transformer
        # becomes the student, so no copy of it sits unused.
        self.teacher = load_teacher(job.teacher.kind, job.teacher.path, device=str(self.device))
        transformer = self.teacher.take_transformer()
        lora = job.parameterization == "decoupled_lora"
        # Phase 2 trains a discriminator only with an adversarial term; the perceptual term
        # needs its (frozen) backbone without one.
        self.trains_disc = job.phase == 2 and cfg.adversarial
        uses_backbone = job.phase == 2 and cfg.reads_backbone
        backbone = None
        if uses_backbone and not lora:
            # copied before the phase-1 weights are loaded: the backbone is the teacher
            backbone = frozen_copy(transformer, torch.bfloat16 if self.autocast["enabled"]
                                   else torch.float32).to(self.device)
            if cfg.gradient_checkpointing:  # the generator step backpropagates through it
                backbone.enable_gradient_checkpointing()
        # A LoRA base is frozen: bf16 on GPUs (half the memory of the largest tensor set);
        # the trained weights (whole generators, or the adapters) are float32 masters.
        base_dtype = torch.bfloat16 if lora and self.autocast["enabled"] else torch.float32
        self.student = TwoStepStudent.from_teacher(transformer, job.parameterization,
                                                   job.sigma_mid, dtype=base_dtype,
                                                   lora=job.lora, take=True).to(self.device)
        del transformer
        if job.init_weights:
            ckpt.load_student_weights(self.student, Path(job.init_weights))
        if cfg.gradient_checkpointing:
            self.student.enable_gradient_checkpointing()
        self.sharded = world > 1 and cfg.strategy == "fsdp2"
        self.model = parallelize(self.student, backbone, cfg.strategy, world, self.device,
                                 bf16=self.autocast["enabled"],
                                 find_unused_parameters=self._unused_parameters())
        self.trainable = self.student.trainable()
        self.ema = ParamEMA(self.trainable)
        self.opt_g = _optimizer(list(self.trainable.values()), cfg.optimizer)
        self.optimizers: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {
            "student": (self.student, self.opt_g)}
        self.disc: Discriminator | None = None
        self.backbone_features: BackboneFeatures | None = None
        if uses_backbone:  # phase 2 only: phase 1's config has no discriminator section
            d = cfg.discriminator
            tap = (self.student.g1 if lora else backbone, d.layers)
            context = self.student.base_only if lora else contextlib.nullcontext
            if self.trains_disc:
                self.disc = Discriminator(*tap, d.hidden, backbone_context=context,
                                          stop_early=not self.sharded).to(self.device)
                self.backbone_features = self.disc.backbone_features
                self.opt_d = _optimizer(self.disc.parameters(), d.optimizer)
                self.optimizers["discriminator"] = (self.disc, self.opt_d)
            else:  # the perceptual term alone: the frozen backbone, no heads
                self.backbone_features = BackboneFeatures(*tap, backbone_context=context,
                                                          stop_early=not self.sharded)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.local_batch = cfg.batch_size // world
        self._heldout: dict[str, Any] | None = None

    def _unused_parameters(self) -> bool:
        """Parameters that get no gradient make DDP fail at the next step unless declared."""
        c = self.cfg
        return self.job.phase == 2 and (
            (not c.end_to_end and c.step1_weight == 0)
            or (c.adv_weight == 0 and c.final_weight == 0 and c.feature_weight == 0
                and c.pixel_weight == 0))

    # -- data ------------------------------------------------------------------------------
    def _reader(self, shards: list[SampleShard], **kw) -> TeacherSampleReader:
        return TeacherSampleReader(self.job.store_root, self.job.samples_dir, shards, **kw)

    def _batches(self, start_step: int) -> Iterator[dict[str, Any]]:
        reader = self._reader(self.job.train_shards, rank=self.rank, world_size=self.world,
                              shuffle_buffer=self.cfg.shuffle_buffer, seed=self.cfg.seed,
                              loop=True)
        stream = islice(iter(reader), start_step * self.local_batch, None)
        while True:
            yield collate_samples(list(islice(stream, self.local_batch)))

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the global batch: rows ``rank, rank + world,
        ...``, the positions the reader's every-n-th split gives this rank, so that a sample
        gets the draw it gets with one worker."""
        return t[self.rank::self.world]

    # -- steps -----------------------------------------------------------------------------
    def _to(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        caps = [c.to(self.device) for c in batch["caption"]]
        return (caps, batch["noise"].to(self.device), batch["x_mid"].to(self.device),
                batch["x0"].to(self.device))

    def _reg(self, pred, target) -> torch.Tensor:
        return regression(pred, target, self.cfg.loss, self.cfg.huber_c)

    def phase1_step(self, step: int, batch: dict[str, Any]) -> dict[str, float]:
        caps, noise, x_mid_t, x0_t = self._to(batch)
        _set_lr(self.opt_g, self.cfg.optimizer, step, self.cfg.steps)
        with torch.autocast(**self.autocast):
            x_mid, x0 = self.model(noise, caps, x_mid_in=x_mid_t)
        loss_1, loss_2 = self._reg(x_mid, x_mid_t), self._reg(x0, x0_t)
        loss = loss_1 + loss_2
        self._check(loss, step)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        norm = _clip(self.trainable.values(), self.cfg.optimizer)
        self.opt_g.step()
        self._ema(step)
        return {"loss": loss.item(), "loss_step1": loss_1.item(), "loss_step2": loss_2.item(),
                "grad_norm_g": norm}

    def _pixel_distance(self, x0: torch.Tensor, x0_t: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the decoded images ``(B, 3, H, W)``, differentiable in the
        student's ``x0``; the teacher's side without gradients."""
        with torch.no_grad():
            target = self.teacher.decode_differentiable(x0_t)
        return regression(self.teacher.decode_differentiable(x0), target)

    def _real_images(self, batch: dict[str, Any], x0_t: torch.Tensor) -> torch.Tensor:
        if self.cfg.gan_real == "teacher":
            return x0_t
        from pipeline.toy.render import render_toy_prompts

        seeds = self._mine(torch.randint(0, 2**31 - 1, (self.cfg.batch_size,),
                                         generator=self.gen))
        images = render_toy_prompts(batch["prompt"], seeds.tolist())
        return self.teacher.encode_images(images).to(self.device)

    def _disc_draws(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.discriminator
        n = self.cfg.batch_size
        sigma = d.sigma_min + (d.sigma_max - d.sigma_min) * torch.rand(
            n, generator=self.gen)
        noise = torch.randn((n, *like.shape[1:]), generator=self.gen)
        return self._mine(sigma).to(self.device), self._mine(noise).to(self.device)

    def phase2_step(self, step: int, batch: dict[str, Any]) -> dict[str, float]:
        cfg = self.cfg
        caps, noise, x_mid_t, x0_t = self._to(batch)
        real = self._real_images(batch, x0_t) if self.trains_disc else None
        # Generator step.
        _set_lr(self.opt_g, cfg.optimizer, step, cfg.steps)
        adaptive = cfg.adv_weighting == "adaptive" and self.trains_disc
        tap = self.backbone_features
        if tap is not None:
            sigma_g, noise_g = self._disc_draws(x0_t)
        if self.disc is not None:
            self.disc.requires_grad_(False)
        adv = feature = torch.zeros((), device=self.device)
        with torch.autocast(**self.autocast):
            x_mid, x0 = self.model(noise, caps, detach_mid=not cfg.end_to_end)
            if tap is not None:
                # adaptive: the discriminator's terms see a leaf copy of x0, so that their
                # gradients on x0 can be measured and rescaled before they reach the student
                x0_d = x0.detach().requires_grad_() if adaptive else x0
                fake_feats = tap(noised(x0_d, noise_g, sigma_g), sigma_g, caps)
                if self.disc is not None:
                    fake_logits = self.disc.head_logits(fake_feats, caps)
                if cfg.feature_weight:
                    with torch.no_grad():  # the teacher's x0 from the same noise, re-noised alike
                        real_feats = tap(noised(x0_t, noise_g, sigma_g), sigma_g, caps)
                    feature = feature_distance(fake_feats, real_feats)
        if self.disc is not None:
            adv = generator_adversarial(fake_logits.float(), cfg.adv_loss)
        step1 = self._reg(x_mid, x_mid_t)
        final = self._reg(x0, x0_t)
        pixel = self._pixel_distance(x0, x0_t) if cfg.pixel_weight else torch.zeros(())
        ramp = adversarial_ramp(step, cfg.adv_start_step, cfg.adv_warmup_steps)
        regression_terms = (cfg.step1_weight * step1 + cfg.final_weight * final
                            + cfg.pixel_weight * pixel)
        if adaptive:
            adv_weight, x0_grad = adaptive_adversarial_gradient(
                x0, x0_d, cfg.final_weight * final, adv, cfg.adv_weight, ramp,
                feature=feature if cfg.feature_weight else None,
                feature_weight=cfg.feature_weight, all_reduce=self._sum_over_ranks)
            # same gradients as the weighted loss; the value logged is the weighted loss
            backprop = regression_terms + (x0.float() * x0_grad).sum()
        else:
            adv_weight = cfg.adv_weight
        loss_g = ramp * adv_weight * adv + regression_terms + cfg.feature_weight * feature
        self._check(loss_g, step)
        self.opt_g.zero_grad(set_to_none=True)
        (backprop if adaptive else loss_g).backward()
        norm_g = _clip(self.trainable.values(), cfg.optimizer)
        self.opt_g.step()
        self._ema(step)
        values = {"loss_g": loss_g.item(), "loss_step1": step1.item(),
                  "loss_final": final.item(), "loss_feature": feature.item(),
                  "loss_pixel": pixel.item(),
                  "grad_norm_g": norm_g}
        if self.trains_disc:
            values |= {"loss_adv_g": adv.item(), "adv_weight": ramp * float(adv_weight),
                       **self._discriminator_step(step, caps, real, x0.detach())}
        return values

    def _discriminator_step(self, step: int, caps: list[torch.Tensor], real: torch.Tensor,
                            fake: torch.Tensor) -> dict[str, float]:
        """One discriminator update: ``real`` (teacher or data latents) against ``fake`` (the
        generator's detached x0, the same shape), both re-noised with the same draws."""
        cfg, d = self.cfg, self.cfg.discriminator
        self.disc.requires_grad_(True)
        _set_lr(self.opt_d, d.optimizer, step, cfg.steps)
        sigma_d, noise_d = self._disc_draws(real)
        r1_now = d.r1_weight > 0 and step % d.r1_every == 0
        real_in = real.detach().requires_grad_(r1_now)
        with torch.autocast(**self.autocast), twice_differentiable_attention(r1_now):
            logits = self.disc(torch.cat([real_in, fake]), caps + caps,
                               torch.cat([sigma_d, sigma_d]), torch.cat([noise_d, noise_d]))
        real_logits, fake_logits = logits.float().chunk(2)
        loss_d = discriminator_adversarial(real_logits, fake_logits, cfg.adv_loss)
        r1 = r1_penalty(real_logits, real_in) if r1_now else torch.zeros(())
        total_d = loss_d + d.r1_weight * d.r1_every * r1
        self._check(total_d, step)
        self.opt_d.zero_grad(set_to_none=True)
        total_d.backward()
        _average_grads(self.disc.parameters(), self.world)
        norm_d = _clip(self.disc.parameters(), d.optimizer)
        self.opt_d.step()
        return {"loss_d": loss_d.item(), "r1": r1.item(),
                "d_real": real_logits.mean().item(), "d_fake": fake_logits.mean().item(),
                "d_accuracy": discriminator_accuracy(real_logits, fake_logits),
                "grad_norm_d": norm_d}

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    @torch.no_grad()
    def heldout_discrimination(self) -> dict[str, float]:
        """How well the discriminator tells held-out teacher samples (real) from the current
        generator's samples of the same eval prompts and noise (fake): balanced accuracy,
        per side, and the mean logit margin, on the first ``discriminator.eval_samples`` eval
        samples re-noised with fixed draws over the training range (the same every time, so
        the curve over training compares like with like). With ``gan_real=data`` the real
        side here is still the teacher's. Every rank calls (FSDP2 forwards are collective)."""
        d = self.cfg.discriminator
        if self._heldout is None:
            reader = self._reader(self.job.eval_shards)
            batch = collate_samples(list(islice(iter(reader), d.eval_samples)))
            gen = torch.Generator().manual_seed(self.cfg.seed + 1)
            n = batch["x0"].shape[0]
            sigma = d.sigma_min + (d.sigma_max - d.sigma_min) * torch.rand(n, generator=gen)
            noise = torch.randn(batch["x0"].shape, generator=gen)
            self._heldout = {"caps": [c.to(self.device) for c in batch["caption"]],
                             "noise": batch["noise"].to(self.device),
                             "x0": batch["x0"].to(self.device),
                             "sigma": torch.cat([sigma, sigma]).to(self.device),
                             "renoise": torch.cat([noise, noise]).to(self.device)}
        h = self._heldout
        with torch.autocast(**self.autocast):
            fake = self.student.sample(h["noise"], h["caps"])
            logits = self.disc(torch.cat([h["x0"], fake.to(h["x0"].dtype)]),
                               h["caps"] + h["caps"], h["sigma"], h["renoise"])
        real_logits, fake_logits = logits.float().chunk(2)
        return {"heldout_d_accuracy": discriminator_accuracy(real_logits, fake_logits),
                "heldout_d_real_accuracy": (real_logits > 0).float().mean().item(),
                "heldout_d_fake_accuracy": (fake_logits < 0).float().mean().item(),
                "heldout_d_margin": (real_logits.mean() - fake_logits.mean()).item()}

    def _check(self, loss: torch.Tensor, step: int) -> None:
        """Every rank raises together (before backward, so none waits in DDP's all-reduce)."""
        finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        if self.world > 1:
            finite = finite.to(self.device)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {step}; training "
                                f"stopped, the last good checkpoint is kept (lower the "
                                f"learning rate or enable gradient clipping)")

    def _ema(self, step: int) -> None:
        self.ema.update(self.cfg.ema_decay, step)

    # -- outputs ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self):
        """Eval prompts, one row each: teacher 8-step image | EMA student 2-step image. Every
        rank calls it (FSDP2 forwards are collective); rank 0 uses the sheet."""
        from PIL import Image

        from pipeline.generate import contact_sheet, to_uint8

        reader = self._reader(self.job.eval_shards or self.job.train_shards,
                              decode_images=True)
        batch = collate_samples(list(islice(iter(reader), self.cfg.sample_prompts)))
        caps = [c.to(self.device) for c in batch["caption"]]
        with torch.autocast(**self.autocast), self.ema.applied():
            x0 = self.student.sample(batch["noise"].to(self.device), caps)
        student = to_uint8(self.teacher.decode(x0.float()).cpu())
        teacher = batch["image"].permute(0, 2, 3, 1).numpy()
        pairs = [img for pair in zip(teacher, student, strict=True) for img in pair]
        import numpy as np

        sheet = contact_sheet(np.stack(pairs), columns=2,
                              scale=max(1, 128 // teacher.shape[1]))
        return sheet if isinstance(sheet, Image.Image) else Image.fromarray(sheet)

    def _gathered(self) -> dict[str, dict[str, torch.Tensor]]:
        """Consolidated FQN-keyed student and EMA tensors (collective; filled on rank 0)."""
        student = ckpt.gather_trainable(self.student)
        with self.ema.applied():
            ema = ckpt.gather_trainable(self.student)
        return {"student": student, "ema": ema}

    def save_final(self, step: int, last: dict[str, float]) -> None:
        """Every rank calls (gathering is collective); rank 0 writes."""
        from safetensors.torch import save_file

        weights = self._gathered()
        if self.rank != 0:
            return
        # No safetensors metadata: its header order is not stable, and the next stage's cache
        # key hashes these bytes. Phase, parameterization and sigma_mid are in the manifest.
        for name, tensors in weights.items():
            save_file(ckpt.student_file_tensors(self.student, tensors),
                      str(self.out / f"{name}.safetensors"))
        if self.trains_disc:
            save_file(ckpt.module_tensors(self.disc), str(self.out / "discriminator.safetensors"))
        config = json.loads(self.student.g1.to_json_string())
        config.pop("_name_or_path", None)  # where the teacher was loaded from: not content
        (self.out / "transformer_config.json").write_text(json.dumps(config, indent=2,
                                                                     sort_keys=True) + "\n")
        # Deterministic content only (the MLflow run id goes to the status file): the next
        # stage's cache key hashes these files.
        (self.out / "train_state.json").write_text(json.dumps(
            {"steps": step, "last": last}, indent=2))

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> str | None:
        """Train to ``steps`` (resuming from the newest checkpoint); returns the MLflow run id."""
        cfg, job = self.cfg, self.job
        lead = self.rank == 0
        start_step, run_id = 0, None
        latest = ckpt.latest_checkpoint(self.out)
        if latest is not None:
            state = self._resume(latest)
            start_step, run_id = state["step"], state.get("mlflow_run_id")
        if lead:
            # A fresh start (step 0) records the held-out step 0 again: keep nothing then.
            for name in (LOSSES_FILE, HELDOUT_FILE):
                _truncate_losses(self.out / name, start_step if start_step else -1)
        tracker = self._tracker(run_id, active=lead)
        step_fn = self.phase1_step if job.phase == 1 else self.phase2_step
        batches = self._batches(start_step)
        last: dict[str, float] = {}
        step = start_step
        began, status = time.perf_counter(), "FINISHED"
        # held out means eval samples: without them (no eval split) there is no such check
        watch_d = (self.trains_disc and cfg.discriminator.eval_samples > 0
                   and bool(job.eval_shards))
        try:
            if watch_d and start_step == 0:
                self._track_heldout(tracker, 0)
            while step < cfg.steps:
                if cfg.stop_after is not None and step - start_step >= cfg.stop_after:
                    break
                values = _all_reduce_mean(step_fn(step, next(batches)), self.world,
                                          self.device)
                step += 1
                last = values
                if lead:
                    with (self.out / LOSSES_FILE).open("a") as handle:
                        handle.write(json.dumps({"step": step, **values}) + "\n")
                    tracker.metric(step, values)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        rate = (step - start_step) * cfg.batch_size / (
                            time.perf_counter() - began)
                        tracker.metric(step, {"samples_per_s": rate})
                        tracker.flush()
                        print(f"phase {job.phase} step {step}/{cfg.steps}: " + ", ".join(
                            f"{k} {v:.4g}" for k, v in values.items()) +
                            f" ({rate:.1f} samples/s)", flush=True)
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    grid = self.sample_grid()
                    if lead:
                        tracker.image(grid, f"samples/step-{step:07d}.png")
                    if watch_d:
                        self._track_heldout(tracker, step)
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self._checkpoint(step, tracker.run_id)
        except NonFiniteLoss:
            status = "FAILED"
            raise
        finally:
            if lead:
                tracker.finish(status if step >= cfg.steps or status == "FAILED"
                               else "KILLED")
        if step < cfg.steps:
            self._checkpoint(step, tracker.run_id)
            raise StoppedEarly(f"stopped after step {step} of {cfg.steps} (stop_after); "
                               f"rerun to resume from the checkpoint")
        self.save_final(step, last)
        if self.world > 1:
            dist.barrier()
        if lead:
            shutil.rmtree(self.out / ckpt.CHECKPOINTS, ignore_errors=True)
        return tracker.run_id

    def _track_heldout(self, tracker: RunTracker, step: int) -> None:
        values = self.heldout_discrimination()
        if self.rank == 0:
            tracker.metric(step, values)
            tracker.flush()
            with (self.out / HELDOUT_FILE).open("a") as handle:
                handle.write(json.dumps({"step": step, **values}) + "\n")
            v = {k.removeprefix("heldout_d_"): x for k, x in values.items()}
            print(f"phase 2 step {step}: held-out discriminator accuracy {v['accuracy']:.3f} "
                  f"(real {v['real_accuracy']:.3f}, fake {v['fake_accuracy']:.3f}, margin "
                  f"{v['margin']:+.3g})", flush=True)

    def _tracker(self, run_id: str | None, active: bool) -> RunTracker:
        job = self.job
        return RunTracker(
            job.mlflow_uri, job.mlflow_experiment, run_name=job.run_name, tags=job.tags,
            params={"phase": job.phase, "parameterization": job.parameterization,
                    "sigma_mid": job.sigma_mid, **self.cfg.model_dump(mode="json")},
            run_id=run_id, artifact_location=job.mlflow_artifacts, active=active)

    def _checkpoint(self, step: int, run_id: str | None) -> None:
        """Every rank calls (gathering is collective); rank 0 writes."""
        if self.world > 1:
            dist.barrier()
        ckpt.save_checkpoint(self.out, step, self._heads(), self.optimizers, {"train": self.gen},
                             {"mlflow_run_id": run_id, **self.layout()},
                             extra_tensors=self._gathered())
        if self.world > 1:
            dist.barrier()

    def _heads(self) -> dict[str, torch.nn.Module]:
        return {"discriminator": self.disc} if self.trains_disc else {}

    def layout(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed exactly (the driver checks it first:
        :func:`pipeline.student.launch.check_resume`)."""
        return ckpt.resume_layout(self.world, self.cfg.strategy, self.job.parameterization)

    def _resume(self, folder: Path) -> dict[str, Any]:
        """Restore a checkpoint on every rank; returns its ``state.json``."""
        for name in ("ema", "student"):  # the EMA through the parameters, sharded like them
            path = folder / f"{name}.safetensors"
            ckpt.set_trainable(self.student, ckpt.load_weights(path), str(path))
            if name == "ema":
                self.ema.copy_from_params()
        return ckpt.load_checkpoint(folder, self._heads(), self.optimizers, {"train": self.gen})


def _truncate_losses(path: Path, step: int) -> None:
    """Drop loss records after ``step`` (left by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(f"{line}\n" for line in keep))


def train_worker(loop_config: dict[str, TrainJob]) -> None:
    """Ray Train entry point (``train_loop_per_worker``; ``loop_config = {"job": TrainJob}``):
    one rank of a process group."""
    import ray.train

    context = ray.train.get_context()
    train_rank(loop_config["job"], context.get_world_rank(), context.get_world_size())


def train_one_worker(job: TrainJob) -> None:
    """The whole job in this process, no process group (a plain Ray task, or a direct call)."""
    train_rank(job, 0, 1)


def train_rank(job: TrainJob, rank: int, world: int) -> None:
    """Train as rank ``rank`` of ``world``; rank 0 writes the status file the driver reads
    (done with the MLflow run id, or the error)."""
    torch.set_num_threads(job.config.cpus_per_worker)
    torch.manual_seed(job.config.seed)
    status_path = Path(job.out_dir) / STATUS_FILE
    try:
        run_id = Worker(job, rank, world).run()
    except TwostepError as exc:
        if rank == 0:
            status_path.write_text(json.dumps({"status": "error", "message": str(exc),
                                               "kind": type(exc).__name__}))
        raise
    if rank == 0:
        status_path.write_text(json.dumps({"status": "done", "mlflow_run_id": run_id}))
