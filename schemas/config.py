"""The run configuration: one pydantic section per stage, the run-level ``teacher``, and
workspace, Ray and tracking.

Loaded from a YAML preset in ``configs/`` (see :mod:`pipeline.config`) with ``--set a.b=value``
overrides. Each stage's cache key hashes *its own* section and the run-level sections it
declares it reads (the teacher), so changing a training knob never invalidates curation.
Fields marked :func:`speed_only` change how fast a stage runs, never its result: cache keys
leave them out (:func:`cache_view`).
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from schemas.base import Parameterization, StrictModel

SPEED_ONLY = "speed_only"
"""Mark (``json_schema_extra``) of a field that changes only speed or logging, never a
result."""
SAMPLING_ONLY = "sampling_only"
"""Mark of a teacher field that changes only how the teacher samples (``sample_teacher``'s key
has it; the stages that only load the teacher's weights do not)."""


KEYED_WHEN_SET = "keyed_when_set"
"""Mark of a field added after results were cached: at its default it is left out of cache
keys, so that those results (computed as the default computes) stay cache hits."""


def keyed_when_set(default: Any, **kwargs: Any) -> Any:
    """A :func:`pydantic.Field` marked :data:`KEYED_WHEN_SET`."""
    return Field(default, json_schema_extra={KEYED_WHEN_SET: True}, **kwargs)


def speed_only(default: Any = ..., **kwargs: Any) -> Any:
    """A :func:`pydantic.Field` marked as speed-only (left out of cache keys)."""
    return Field(default, json_schema_extra={SPEED_ONLY: True}, **kwargs)


def marked(field: FieldInfo, mark: str) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(mark))


def cache_view(model: BaseModel, drop: tuple[str, ...] = (SPEED_ONLY,)) -> dict[str, Any]:
    """``model`` as JSON data without the fields marked with any of ``drop`` (by default the
    speed-only ones), at every depth: what a cache key hashes. Equal to
    ``model_dump(mode="json")`` for a model without such fields."""
    return {name: _cache_value(getattr(model, name), drop)
            for name, field in type(model).model_fields.items()
            if not any(marked(field, mark) for mark in drop)
            and not (marked(field, KEYED_WHEN_SET) and getattr(model, name) == field.default)}


def _cache_value(value: Any, drop: tuple[str, ...]) -> Any:
    if isinstance(value, BaseModel):
        return cache_view(value, drop)
    if isinstance(value, (list, tuple)):
        return [_cache_value(v, drop) for v in value]
    if isinstance(value, dict):
        return {k: _cache_value(v, drop) for k, v in value.items()}
    return to_jsonable_python(value)

class RayConfig(StrictModel):
    """Where stages run. ``address=None`` and no ``RAY_ADDRESS`` starts a local Ray instance."""

    address: str | None = Field(
        None,
        description="Ray cluster address (e.g. 'ray://head:10001' or 'auto'). The RAY_ADDRESS "
        "environment variable, when set, takes precedence. None starts a local instance.",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local instance (None: all cores)."
    )
    temp_dir: str | None = Field(
        None, description="Ray's session folder for a local instance (None: Ray's default)."
    )
    include_dashboard: bool = Field(
        True, description="Start the Ray dashboard (on 127.0.0.1) with a local instance. It "
        "also serves Ray's state API, which Ray Train's placement-group cleaner polls (without "
        "it, training logs a warning every few seconds).")


class TrackingConfig(StrictModel):
    """Experiment tracking (MLflow)."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI. None: a SQLite store <workspace>/mlflow.db with "
        "artifacts in <workspace>/mlartifacts.",
    )
    experiment: str = Field("twostep", min_length=1, description="MLflow experiment name.")


class FileSource(StrictModel):
    """Prompts read from one file, fsspec URL or glob (``data/*.jsonl``, ``s3://b/p.parquet``)."""

    kind: Literal["file"] = "file"
    path: str = Field(..., min_length=1, description="Local path, fsspec URL, or a glob.")
    format: Literal["auto", "txt", "jsonl", "json", "csv", "parquet"] = Field(
        "auto", description="File format; 'auto' infers it from the extension."
    )
    field: str = Field(
        "prompt", min_length=1, description="Field or column holding the prompt (not for txt)."
    )
    name: str | None = Field(
        None, description="Source tag recorded with every prompt (default: the file name)."
    )


class ToySource(StrictModel):
    """Prompts generated from the embedded toy world's grammar (deterministic given the seed)."""

    kind: Literal["toy"] = "toy"
    num_prompts: int = Field(..., ge=1, description="How many prompts to generate.")
    seed: int = Field(0, description="Seed of the prompt generator.")
    name: str | None = Field(None, description="Source tag (default 'toy').")


def _source_kind(value: object) -> str:
    # A source without `kind` is a file: `- path: prompts.txt` is the common case.
    if isinstance(value, dict):
        return str(value.get("kind", "file"))
    return str(getattr(value, "kind", "file"))


PromptSource = Annotated[
    Annotated[FileSource, Tag("file")] | Annotated[ToySource, Tag("toy")],
    Discriminator(
        _source_kind,
        custom_error_type="invalid_source_kind",
        custom_error_message="source kind must be 'file' (the default) or 'toy'",
    ),
]


class MinHashConfig(StrictModel):
    """Near-duplicate removal: MinHash over shingles of the text lower-cased and stripped of
    punctuation, LSH banding for candidates, then a Jaccard check on the signatures."""

    enabled: bool = True
    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Estimated Jaccard similarity at or above which two "
        "prompts are near-duplicates (the earlier one is kept)."
    )
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    shingle: Literal["char", "word"] = Field("char", description="Shingle unit.")
    shingle_size: int = Field(
        5, ge=1, le=32, description="Characters or words per shingle; a text shorter than one "
        "shingle is a single shingle, so short prompts still match."
    )
    seed: int = Field(1, description="MinHash permutation seed.")


class CurateConfig(StrictModel):
    """Prompt curation: clean, filter, de-duplicate, split."""

    sources: list[PromptSource] = Field(..., min_length=1, description="Prompt sources.")
    min_chars: int = Field(3, ge=0, description="Drop prompts shorter than this (characters).")
    max_chars: int = Field(1000, ge=1, description="Drop prompts longer than this (characters).")
    min_words: int = Field(1, ge=0, description="Drop prompts with fewer words.")
    max_words: int = Field(200, ge=1, description="Drop prompts with more words.")
    blocklist: list[str] = Field(
        default_factory=list,
        description="Regular expressions (Python `re`, case-insensitive); a prompt matching any "
        "is dropped.",
    )
    near_dedup: MinHashConfig = Field(default_factory=MinHashConfig)
    max_per_source: int | None = Field(
        None, ge=1, description="Keep at most this many prompts per source (earliest first)."
    )
    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of prompts (by hash) in the eval split."
    )
    split_seed: int = Field(0, description="Salt of the split hash; same seed, same split.")
    rows_per_shard: int = Field(50_000, ge=1, description="Prompts per Parquet shard.")
    batch_size: int = speed_only(4096, ge=1, description="Rows per Ray Data batch.")

    @field_validator("blocklist")
    @classmethod
    def _compile_blocklist(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"blocklist[{i}] {pattern!r} is not a valid regex: {exc}") from exc
        return patterns

    @model_validator(mode="after")
    def _check_ranges(self) -> CurateConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) > max_words ({self.max_words})")
        return self


class TeacherConfig(StrictModel):
    """Which teacher to load (see :func:`pipeline.teachers.load_teacher`)."""

    kind: Literal["toy", "zimage"] = Field("toy", description="Teacher adapter.")
    path: str | None = Field(
        None, description="Local folder of the teacher. toy: None is the shipped toy teacher; "
        "zimage: a Z-Image Turbo diffusers folder (required).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", json_schema_extra={SAMPLING_ONLY: True}, description="Sampling dtype. auto: "
        "a local CPU run resolves it before the run to bfloat16 where this CPU computes bf16 "
        "natively and a cached probe measures it faster, else float32 (the manifest records "
        "the choice); on CUDA bfloat16. On CPU bfloat16/float16 run fp32 weights under "
        "autocast.")
    height: int = Field(32, ge=8, description="Image height in pixels (toy: 32).")
    width: int = Field(32, ge=8, description="Image width in pixels (toy: 32).")
    steps: int = Field(8, ge=1, le=1000, description="Teacher sampling steps (Euler).")

    def located(self) -> TeacherConfig:
        """This teacher with an absolute ``path``, as handed to a stage: Ray actors and Ray
        Train workers resolve a relative path against their own working directory (a Ray
        session folder), not the one the run was started in."""
        if self.path is None or PurePath(self.path).is_absolute():
            return self
        return self.model_copy(update={"path": os.path.abspath(self.path)})

    @model_validator(mode="after")
    def _zimage_needs_path(self) -> TeacherConfig:
        if self.kind == "zimage" and not self.path:
            raise ValueError("teacher.path is required for kind 'zimage' (a local Z-Image "
                             "Turbo diffusers folder)")
        return self


class SampleTeacherConfig(StrictModel):
    """Teacher trajectories into WebDataset shards: per prompt ``samples_per_prompt`` noise
    seeds, each sampled by the run's teacher (:class:`TeacherConfig`, the top-level
    ``teacher`` section) with ``teacher.steps`` Euler steps; the latent at ``sigma_mid`` (the
    student's step boundary) and the final latent are kept."""

    @model_validator(mode="before")
    @classmethod
    def _teacher_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "teacher" in data:
            raise ValueError("the teacher is a run-level setting now: move sample_teacher."
                             "teacher to a top-level `teacher:` section (--set teacher.FIELD="
                             "VALUE)")
        return data

    sigma_mid: float = Field(
        0.75, gt=0.0, lt=1.0, description="The student's step boundary; must be a sigma of the "
        "teacher's schedule for `teacher.steps` (toy, 8 steps: 0.9545, 0.9, 0.8333, 0.75, "
        "0.6429, 0.5, 0.3).",
    )
    samples_per_prompt: int = Field(1, ge=1, description="Noise seeds per train prompt.")
    eval_samples_per_prompt: int = Field(1, ge=1, description="Noise seeds per eval prompt.")
    max_train_prompts: int | None = Field(
        None, ge=1, description="Use only the first N train prompts (curated order).")
    max_eval_prompts: int | None = Field(
        None, ge=1, description="Use only the first N eval prompts (curated order).")
    seed: int = Field(0, description="Global seed; sample k of a prompt uses the noise seed "
                      "hash(seed, prompt_id, k).")
    samples_per_shard: int = Field(256, ge=1, description="Samples per tar shard (the last "
                                   "shard of a split may hold fewer).")
    storage_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the stored latents and caption features.")
    batch_size: int = Field(
        64, ge=1, description="Samples per teacher batch. In the cache key: a sample's bytes "
        "can depend on the batch it is computed in (caption padding, kernel blocking).")
    num_actors: int | Literal["auto"] = speed_only(
        "auto", description="Sampling actors. auto: one per GPU when the cluster has GPUs, "
        "else each node's CPUs split into actors of at most 16 threads (one actor on a "
        "laptop); an integer caps the count (pipeline.samples.sampling.plan_actor_pool).")
    cpus_per_actor: int | Literal["auto"] = speed_only(
        "auto", description="CPUs (and torch threads) per actor. auto: the node's CPUs "
        "divided among its actors.")

    @field_validator("num_actors", "cpus_per_actor")
    @classmethod
    def _at_least_one(cls, value: int | str, info: ValidationInfo) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{info.field_name} must be >= 1 or auto (got {value})")
        return value


class OptimizerConfig(StrictModel):
    """AdamW with linear warm-up, then a constant learning rate, a cosine decay, or a constant
    rate that cools down linearly over the phase's last steps."""

    lr: float = Field(1e-4, gt=0.0, description="Peak learning rate.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to lr.")
    schedule: Literal["constant", "cosine", "cooldown"] = Field(
        "constant", description="After the warm-up: constant lr; a cosine decay from lr to "
        "min_lr_ratio * lr over the phase's remaining steps; or cooldown: constant lr, then a "
        "linear decay towards min_lr_ratio * lr over the last cooldown_fraction of them.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine, cooldown: the "
                                "learning rate at the end, as a fraction of lr.")
    cooldown_fraction: float = keyed_when_set(
        0.2, gt=0.0, le=1.0, description="cooldown: the fraction of the steps after the "
        "warm-up over which the learning rate decays.")
    grad_clip: float | None = Field(1.0, gt=0.0, description="Global grad-norm clip (None: off).")


class TrainCommonConfig(StrictModel):
    """What both training phases share: length, batch, workers, precision, logging."""

    steps: int = Field(200, ge=1, description="Optimizer steps (phase 2: generator steps).")
    batch_size: int = Field(32, ge=1, description="Global batch; split evenly over workers.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (ranks).")
    strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="ddp: every worker holds whole models, gradients are averaged; "
        "fsdp2: every transformer block of the generators and of the discriminator's backbone "
        "is sharded over the workers (torch.distributed.fsdp.fully_shard), bf16 parameters "
        "with float32 gradient reduction on GPU. Part of the key: the float sums differ.")
    cpus_per_worker: int = speed_only(2, ge=1, description="CPUs (and torch threads) per "
                                      "worker.")
    use_gpu: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: one GPU per worker when the cluster has GPUs.")
    bf16: bool = Field(True, description="bf16 autocast on GPU (CPU runs stay float32).")
    gradient_checkpointing: bool = speed_only(
        False, description="Recompute transformer blocks in backward (GPU memory for time).")
    seed: int = Field(0, description="Seeds initial noise draws, shuffling and any sampling.")
    shuffle_buffer: int = Field(256, ge=0, description="Reader shuffle buffer (samples).")
    loss: Literal["mse", "pseudo_huber"] = Field(
        "mse", description="Regression distance for teacher targets.")
    huber_c: float = Field(0.03, gt=0.0, description="pseudo-Huber c: sqrt(d^2 + c^2) - c, "
                           "d^2 the mean squared error per sample.")
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0, description="EMA of the generator weights "
                             "(warm-up: min(decay, (1 + step) / (10 + step))).")
    log_every: int = speed_only(10, ge=1, description="Steps between MLflow metric flushes.")
    checkpoint_every: int = speed_only(100, ge=1, description="Steps between checkpoints.")
    sample_every: int = speed_only(100, ge=1, description="Steps between sample grids in "
                                   "MLflow.")
    sample_prompts: int = speed_only(8, ge=1, description="Eval prompts in each sample grid.")
    stop_after: int | None = speed_only(
        None, ge=1, description="End this invocation after N steps with a checkpoint (time-"
        "limited jobs); the stage then fails with 'stopped', and a rerun resumes.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainCommonConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of "
                             f"num_workers ({self.num_workers})")
        if self.strategy == "fsdp2" and self.num_workers < 2:
            raise ValueError("strategy fsdp2 shards the models over the workers and needs "
                             "num_workers >= 2; with one worker use strategy ddp")
        return self


class LoraConfig(StrictModel):
    """The two LoRA adapters of ``decoupled_lora`` (one per step, same shape)."""

    rank: int = Field(16, ge=1, description="LoRA rank r of every adapted linear layer.")
    alpha: float = Field(16.0, gt=0.0, description="LoRA scale numerator: the update is "
                         "(alpha / rank) B A x.")
    target_modules: list[str] = Field(
        ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"], min_length=1,
        description="Linear layers to adapt, PEFT's rule: a module whose name equals an "
        "entry or ends with '.<entry>' (default: attention and feed-forward of every block).")


class TrainInitConfig(TrainCommonConfig):
    """Phase 1, per-step init: G1 learns ``eps -> x_mid_teacher``, G2 ``x_mid_teacher ->
    x0_teacher``, each alone (teacher input, no chaining)."""

    parameterization: Parameterization = Field(
        "decoupled", description="decoupled: G1 and G2 are two copies of the teacher; shared: "
        "one copy serves both steps (ablation); decoupled_lora: one frozen copy with a LoRA "
        "adapter per step (the discriminator reuses it with adapters off).")
    lora: LoraConfig = Field(default_factory=LoraConfig,
                             description="Adapters of decoupled_lora (ignored otherwise).")
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=1e-4))


class DiscriminatorConfig(StrictModel):
    """A frozen copy of the teacher transformer as feature backbone; small trainable heads on
    the image tokens of a few blocks, conditioned on the pooled caption (projection)."""

    layers: list[int] = Field(
        [1, 3], min_length=1, description="Main transformer blocks whose outputs feed heads "
        "(0-based; negative counts from the end).")
    hidden: int = Field(128, ge=8, description="Head width.")
    sigma_min: float = Field(0.05, ge=0.0, lt=1.0, description="Inputs are re-noised to a "
                             "sigma drawn uniformly from [sigma_min, sigma_max].")
    sigma_max: float = Field(0.7, gt=0.0, le=1.0)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(lr=2e-4, betas=(0.0, 0.99)))
    r1_weight: float = Field(0.0, ge=0.0, description="R1 penalty on real inputs (0: off).")
    r1_every: int = Field(4, ge=1, description="Lazy R1: every N discriminator steps.")
    eval_samples: int = speed_only(
        64, ge=0, description="Held-out eval samples on which the discriminator's accuracy "
        "(teacher vs current student) is measured at step 0 and every sample_every steps, "
        "logged to MLflow and heldout_discriminator.jsonl (0: off).")

    @model_validator(mode="after")
    def _sigma_range(self) -> DiscriminatorConfig:
        if self.sigma_min > self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) > sigma_max ({self.sigma_max})")
        return self


class TrainE2EConfig(TrainCommonConfig):
    """Phase 2: ``eps -G1-> x_mid -G2-> x0`` chained, adversarial loss on ``x0`` plus the
    step-1 (iterative) regularization and an optional final regression to the teacher."""

    gan_real: Literal["teacher", "data"] = Field(
        "teacher", description="Real samples for the discriminator: teacher images (the "
        "paper) or the data set (toy: ground-truth renders of the same prompts; ablation).")
    end_to_end: bool = Field(True, description="Gradients flow from x0 into G1 through x_mid; "
                             "false detaches x_mid (ablation).")
    step1_weight: float = Field(1.0, ge=0.0, description="Weight of d(x_mid, x_mid_teacher); "
                                "0 disables the iterative regularization.")
    adv_weight: float = Field(0.1, ge=0.0, description="Weight of the generator's adversarial "
                              "loss; with adv_weighting=adaptive the ratio of its gradient's "
                              "norm to the final regression's. 0: no adversarial term, and "
                              "no discriminator is built, trained or evaluated (unless "
                              "feature_weight > 0 needs its backbone).")
    adv_weighting: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed: the adversarial loss times adv_weight. adaptive: its "
        "gradient on the student's x0 is rescaled every step to adv_weight times the norm of "
        "the final regression's gradient on x0 (VQGAN's adaptive weight, taken on the output), "
        "so a discriminator that wins cannot outweigh the regression. Like the other "
        "adversarial settings (adv_loss, adv_warmup_steps, adv_start_step, discriminator.r1_*)"
        " it has no effect at adv_weight 0.")
    final_weight: float = Field(1.0, ge=0.0, description="Weight of d(x0, x0_teacher) from the "
                                "same noise (0: off).")
    feature_weight: float = Field(
        0.0, ge=0.0, description="Weight of the perceptual term: the distance between the "
        "discriminator backbone's (layer-normalized) features of the student's x0 and of the "
        "teacher's x0 from the same noise, both re-noised alike (0: off).")
    pixel_weight: float = keyed_when_set(
        0.0, ge=0.0, description="Weight of the mean squared error between the decoded images "
        "of the student's x0 and of the teacher's x0 from the same noise (the teacher's "
        "decoder, frozen, backpropagated through to x0; 0: off). Where the latent regression "
        "weighs every latent component alike, this weighs them as the decoder shows them. One "
        "decoder forward and backward a step: cheap for the toy autoencoder, heavy for a large "
        "VAE at 1024 px.")
    adv_warmup_steps: int = Field(
        0, ge=0, description="Ramp the generator's adversarial weight linearly from 0 over "
        "these steps, so the discriminator learns before its gradients steer the student.")
    adv_start_step: int = Field(
        0, ge=0, description="Step before which the generator gets no adversarial gradient "
        "(the discriminator trains from step 0 all the same); the adv_warmup_steps ramp starts "
        "here. Lets the regression converge before the adversarial term acts.")
    adv_loss: Literal["non_saturating", "hinge"] = Field("non_saturating")
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=5e-5))
    init_from: Literal["ema", "student"] = Field(
        "ema", description="Which phase-1 weights start phase 2.")

    @property
    def adversarial(self) -> bool:
        """Whether phase 2 has an adversarial term (and so trains a discriminator)."""
        return self.adv_weight > 0

    @property
    def reads_backbone(self) -> bool:
        """Whether phase 2 reads the frozen teacher backbone at ``discriminator.layers``: for
        the discriminator, or for the perceptual term without one."""
        return self.adversarial or self.feature_weight > 0

    @model_validator(mode="after")
    def _adversarial_starts_in_time(self) -> TrainE2EConfig:
        # the ramp is 0 at adv_start_step itself when there is a warm-up (adversarial_ramp)
        first_acting = self.adv_start_step + (1 if self.adv_warmup_steps else 0)
        if self.adversarial and first_acting >= self.steps:  # the defaults pass
            ramp = (f" + 1 (the adv_warmup_steps ramp is 0 at its first step) = {first_acting}"
                    if self.adv_warmup_steps else "")
            raise ValueError(f"adv_start_step ({self.adv_start_step}){ramp} >= steps "
                             f"({self.steps}): the adversarial term would never act; lower it, "
                             "or set adv_weight=0 to train without it")
        return self

    @model_validator(mode="after")
    def _something_to_learn(self) -> TrainE2EConfig:
        if not (self.adversarial or self.step1_weight or self.final_weight
                or self.feature_weight or self.pixel_weight):
            raise ValueError("adv_weight, step1_weight, final_weight, feature_weight and "
                             "pixel_weight are all 0: phase 2 would train nothing (every "
                             "gradient is 0); set one of them > 0")
        return self

    @model_validator(mode="after")
    def _real_samples_need_a_discriminator(self) -> TrainE2EConfig:
        if self.gan_real == "data" and not self.adversarial:
            raise ValueError("gan_real=data chooses the discriminator's real samples, but "
                             "adv_weight=0 trains no discriminator: set adv_weight > 0 or "
                             "leave gan_real at teacher")
        return self

    @model_validator(mode="after")
    def _adaptive_needs_final(self) -> TrainE2EConfig:
        # at adv_weight 0 there is no adversarial gradient to scale: nothing to refuse
        if self.adversarial and self.adv_weighting == "adaptive" and self.final_weight == 0:
            raise ValueError("adv_weighting=adaptive scales the adversarial gradient to the "
                             "final regression's, which final_weight=0 switches off: set "
                             "final_weight > 0 or adv_weighting=fixed")
        return self

    @model_validator(mode="after")
    def _r1_needs_whole_backbone(self) -> TrainE2EConfig:
        # R1 differentiates the discriminator's input gradient (a double backward through the
        # backbone); FSDP2 frees the all-gathered backbone weights after the first backward,
        # so the second fails at the first step, after all of phase 1 (torch 2.13)
        if self.adversarial and self.discriminator.r1_weight > 0 and self.strategy == "fsdp2":
            raise ValueError("discriminator.r1_weight > 0 needs a double backward through the "
                             "discriminator's backbone, which strategy fsdp2 shards and frees "
                             "after the first backward: set discriminator.r1_weight=0 or "
                             "strategy=ddp")
        return self


class FIDConfig(StrictModel):
    """FID/KID on pool3 features of the FID InceptionV3 (the published TensorFlow 2015-12-05
    weights, converted once with ``distill metrics convert-inception``)."""

    weights: str = Field(description="Local safetensors file of the FID Inception weights.")
    reference_dir: str | None = Field(
        None, description="Folder of real images (PNG/JPEG/WebP, one size) to score against as "
        "well as the teacher; None: teacher only.")
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets.")
    kid_subset_size: int = Field(1000, ge=2, description="KID: subset size (capped at the "
                                 "number of images).")
    batch_size: int = speed_only(64, ge=1, description="Feature batch.")


class CLIPScoreConfig(StrictModel):
    """CLIP score of images against their prompts."""

    path: str = Field(description="Local folder of a Hugging Face CLIPModel (config.json, "
                      "safetensors weights, tokenizer), e.g. openai/clip-vit-large-patch14 "
                      "saved with save_pretrained.")
    batch_size: int = speed_only(64, ge=1, description="Scoring batch.")


class RealMetricsConfig(StrictModel):
    """Real-domain metrics for the Z-Image scale, each loading weights from a local path;
    None switches one off."""

    fid: FIDConfig | None = Field(None, description="FID and KID; None: off.")
    clip: CLIPScoreConfig | None = Field(None, description="CLIP score; None: off.")


class EvaluateConfig(StrictModel):
    """Generate for the eval prompts with fixed seeds (the teacher samples' noise): teacher at
    its full steps, teacher naively at 2 steps, the phase-1 and phase-2 students at 2 steps and
    any extra students; the same noise for all."""

    max_samples: int | None = Field(
        None, ge=2, description="Use at most this many eval samples (None: all).")
    weights: Literal["ema", "student"] = Field("ema", description="Student weights to use.")
    extra_students: dict[str, str] = Field(
        default_factory=dict, description="More students to compare: name -> folder of a "
        "finished train_init/train_e2e stage (not a name of the run's own generators: "
        "student, student_phase1, teacher_<steps>).")
    grid_prompts: int = Field(8, ge=1, description="Rows of the image grid.")
    batch_size: int = speed_only(128, ge=1, description="Generation batch (another batch moves "
                                 "the images by float rounding only: 6e-6 in the toy latent, "
                                 "the same uint8 images; so not in the cache key).")
    latency_repeats: int = Field(3, ge=1, description="Timed repeats of one batch per "
                                 "generator for the latency table (they change only the "
                                 "latency numbers).")
    latency_batch: int = Field(1, ge=1, description="Batch size of the latency measurement.")
    real_metrics: RealMetricsConfig = Field(default_factory=RealMetricsConfig)

    @field_validator("extra_students")
    @classmethod
    def _names_of_their_own(cls, students: dict[str, str]) -> dict[str, str]:
        # the report, the export card and the ablation read these names as the run's own
        for name in students:
            if name in ("student", "student_phase1") or re.fullmatch(r"teacher_\d+", name):
                raise ValueError(f"{name!r} is the name of one of the run's own generators "
                                 "(student, student_phase1, teacher_<steps>): choose another")
        return students


class ExportConfig(StrictModel):
    """The distilled 2-step generator as a diffusers pipeline folder (``export/<key>/pipeline``):
    the student's two transformers, the teacher's text encoder, tokenizer and decoder, a
    scheduler with the trained sigmas, the pipeline's code file and a model card. The weights
    are the ones evaluate scored (``evaluate.weights``), so the card's numbers are theirs."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of every exported weight.")
    max_shard_size: str = Field(
        "5GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB)$",
        description="Largest safetensors shard (e.g. '5GB', '500MB'; decimal units, the ones "
        "diffusers' save_pretrained parses); larger models are split.")


class DistillConfig(StrictModel):
    """The whole run: the run-level settings (``teacher``, and ``workspace``, ``ray`` and
    ``tracking``, which never change a result) and one section per stage."""

    name: str = Field("run", min_length=1, description="Run name (the preset name by default).")
    workspace: str | None = Field(
        None, description="Artifact root (local path or fsspec URL). None: ./runs/<name>."
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig, description="The teacher every stage that needs one "
        "loads (sample_teacher, both training phases, evaluate, export); part of their cache "
        "keys (dtype only of sample_teacher's: it changes sampling alone).")
    curate: CurateConfig
    sample_teacher: SampleTeacherConfig = Field(default_factory=SampleTeacherConfig)
    train_init: TrainInitConfig = Field(default_factory=TrainInitConfig)
    train_e2e: TrainE2EConfig = Field(default_factory=TrainE2EConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
