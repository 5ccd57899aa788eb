"""Typed manifests: the contract between stages.

A manifest is written last and atomically into its stage folder
``<workspace>/<stage>/<key>/manifest.json``. A folder without one is unfinished work. Every
output file is listed with its size and sha256 so a reader can verify what it consumes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from schemas.base import Parameterization, StrictModel

MANIFEST_FILENAME = "manifest.json"


class FileEntry(StrictModel):
    """One output file, relative to the stage folder."""

    path: str = Field(..., description="Path relative to the stage folder, '/'-separated.")
    size: int = Field(..., ge=0, description="Size in bytes.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class InputRef(StrictModel):
    """Lineage: one upstream manifest this stage consumed."""

    stage: str
    key: str
    content_sha256: str = Field(
        ..., pattern=r"^[0-9a-f]{64}$", description="Hash of the input's file list and sha256s."
    )
    uri: str = Field(..., description="Where the upstream stage folder lives.")


class Manifest(StrictModel):
    """Fields every stage manifest carries. Subclasses add typed, stage-specific fields."""

    schema_version: int = 1
    stage: str
    key: str = Field(..., description="Cache key: hash of stage name, config section, inputs.")
    created_at: datetime
    code_version: str = Field(..., description="twostep version plus git commit when known.")
    config: dict[str, Any] = Field(..., description="The stage's config section, as run.")
    run_config: dict[str, Any] = Field(
        default_factory=dict, description="The run-level sections the stage read, as run "
        "(``teacher`` for the stages that load one).")
    inputs: list[InputRef] = Field(default_factory=list)
    external_inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Inputs that are not stage outputs (e.g. source files): URI -> fsspec ukey "
        "(changes when the file's size or modification time changes).",
    )
    files: list[FileEntry] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")

    def verified_when_read(self) -> set[str]:
        """Files that their reader checks against this manifest as it streams them; a
        consuming stage verifies every other file (size, sha256) before it starts."""
        return set()


class PromptShard(StrictModel):
    """One Parquet shard of prompts."""

    path: str
    num_rows: int = Field(..., ge=0)


class PromptSplit(StrictModel):
    num_prompts: int = Field(..., ge=0)
    shards: list[PromptShard] = Field(default_factory=list)


class SourceStats(StrictModel):
    """What one source contributed and lost, rule by rule."""

    name: str
    uri: str
    rows_read: int = Field(..., ge=0)
    kept: int = Field(..., ge=0)
    dropped: dict[str, int] = Field(default_factory=dict)


class PromptSetManifest(Manifest):
    """Output of ``curate``: Parquet shards with columns ``prompt_id`` (16 hex chars, a hash of
    the normalized prompt, stable across runs and inputs), ``prompt``, ``source``,
    ``source_row`` (0-based row within its source file), split into train and eval.

    ``counts`` always satisfies ``rows_read == kept + sum(dropped.values())``; ``dropped`` maps
    each rule to the rows it removed (a row is charged to the first rule it fails, in
    :data:`CURATION_RULES` order). ``dropped.parquet`` lists every dropped row with its reason.
    """

    stage: Literal["curate"] = "curate"
    splits: dict[str, PromptSplit]
    dropped: dict[str, int]
    sources: list[SourceStats]


CURATION_RULES: tuple[str, ...] = (
    "malformed_utf8",
    "malformed_record",
    "missing_field",
    "empty",
    "too_short_chars",
    "too_long_chars",
    "too_few_words",
    "too_many_words",
    "blocklist",
    "exact_duplicate",
    "near_duplicate",
    "source_cap",
)
"""Curation rules in the order they are applied; each dropped row names exactly one."""


class SampleShard(StrictModel):
    """One WebDataset tar shard of teacher samples."""

    path: str = Field(..., description="Relative to the stage folder.")
    num_samples: int = Field(..., ge=1)
    size: int = Field(..., ge=0, description="Bytes.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")


class SampleSplit(StrictModel):
    num_prompts: int = Field(..., ge=0)
    num_samples: int = Field(..., ge=0)
    shards: list[SampleShard] = Field(default_factory=list)


class TeacherInfo(StrictModel):
    """What produced the samples: enough to check a student is compatible with them."""

    kind: str
    teacher_id: str = Field(..., description="kind:folder@hash of its config and weight files.")
    steps: int
    sigmas: list[float] = Field(..., description="The teacher's schedule, steps + 1 values.")
    sigma_mid: float
    latent_shape: list[int] = Field(..., description="(C, H, W) of the sampling space.")
    caption_dim: int
    height: int
    width: int


SAMPLE_FIELDS: tuple[str, ...] = ("json", "caption.npy", "noise.npy", "x_mid.npy", "x0.npy",
                                  "png")
"""Members of every sample in a teacher shard (``<key>.<field>``)."""


class TeacherSamplesManifest(Manifest):
    """Output of ``sample_teacher``: WebDataset tar shards ``<split>-NNNNNN.tar`` per split.

    Each sample (``__key__`` = ``<prompt_id>-<k>``, k = 0-based sample index of the prompt)
    holds, as :data:`SAMPLE_FIELDS`: ``json`` (prompt, prompt_id, k, seed, sigmas,
    sigma_mid, teacher_id, split), ``caption.npy`` ``(L, D)`` caption features, ``noise.npy``
    ``(C, H, W)`` the starting noise (sigma 1), ``x_mid.npy`` the teacher's latent at
    ``sigma_mid``, ``x0.npy`` its final latent, and ``png`` the decoded image. Arrays are
    ``.npy`` (read with ``allow_pickle=False``) in ``storage_dtype``.
    """

    stage: Literal["sample_teacher"] = "sample_teacher"
    splits: dict[str, SampleSplit]
    teacher: TeacherInfo
    storage_dtype: str
    compute_dtype: str | None = Field(
        None, description="The dtype the teacher computed the samples in, as the sampling "
        "actors report it: `teacher.dtype: auto` resolved where it ran (bf16 autocast on a CPU "
        "counts as bfloat16). None for samples written before it was recorded.")

    def verified_when_read(self) -> set[str]:
        """The shards: :class:`~pipeline.samples.reader.TeacherSampleReader` checks each one's
        size and sha256 as it reads it (at 6B scale they are too large to read twice)."""
        return {shard.path for split in self.splits.values() for shard in split.shards}


class StudentCheckpointManifest(Manifest):
    """Output of ``train_init`` (phase 1) and ``train_e2e`` (phase 2).

    Files: ``student.safetensors`` (generator weights: ``g1.*`` and ``g2.*``, or ``g.*`` when
    shared, or for ``decoupled_lora`` only the adapters ``g1.<module>.lora_{A,B}.step{1,2}.*``
    over the frozen teacher), ``ema.safetensors`` (same keys, the EMA), phase 2 with an
    adversarial term (``adv_weight > 0``) also ``discriminator.safetensors`` (trainable heads
    only; the backbone is the frozen teacher) and, with ``discriminator.eval_samples > 0``,
    ``heldout_discriminator.jsonl``,
    ``transformer_config.json`` (the generators' diffusers config) and ``train_state.json``.
    Resumable checkpoints under ``checkpoints/step-NNNNNNN/`` hold the same plus optimizer
    states (safetensors + JSON), RNG states, the data position and the layout (world size,
    strategy, parameterization) they resume under.
    """

    stage: Literal["train_init", "train_e2e"]
    phase: int = Field(..., ge=1, le=2)
    parameterization: Parameterization
    lora: dict[str, Any] | None = Field(
        None, description="decoupled_lora: the adapters' LoraConfig (rank, alpha, targets).")
    sigma_mid: float
    teacher_id: str
    steps: int = Field(..., ge=0)
    choices: dict[str, Any] = Field(
        default_factory=dict, description="Every method choice the run made (losses, weights, "
        "discriminator layers, ...), including those where the paper is silent.")
    mlflow_run_id: str | None = None
    mlflow_uri: str | None = None


class GeneratorScores(StrictModel):
    """Metrics of one generator on the eval samples (same noise for every generator)."""

    name: str
    steps: int
    metrics: dict[str, float] = Field(
        default_factory=dict, description="fd_teacher (toy Frechet distance to the teacher's "
        "full-step samples), fd_data (to ground-truth renders), per-attribute accuracy, "
        "mean_accuracy, palette_purity, valid_rate, psnr/ssim vs the teacher image from the "
        "same noise, diversity (mean pairwise feature distance across seeds of a prompt).")
    latency: dict[str, float] = Field(
        default_factory=dict, description="Seconds per image: text_encoding, denoising, "
        "decoding, total; images_per_s.")


class EvalReportManifest(Manifest):
    """Output of ``evaluate``: ``report.md``, ``report.html`` (a self-contained comparison
    page: each prompt's images from every generator side by side, the metrics table),
    ``grid.png`` (one row per prompt, one column per generator, same seed), ``losses.png``
    (training curves), ``metrics.json``."""

    stage: Literal["evaluate"] = "evaluate"
    num_samples: int
    num_prompts: int
    generators: list[GeneratorScores]
    device: str
    grid_prompts: list[str] = Field(default_factory=list,
                                    description="The prompts of the grid's rows, in order.")


class ExportManifest(Manifest):
    """Output of ``export``: ``pipeline/``, a diffusers pipeline folder (see
    :mod:`pipeline.export.folder`) that ``DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`` loads, with its model card ``pipeline/README.md``."""

    stage: Literal["export"] = "export"
    pipeline_dir: str = Field(description="The pipeline folder, relative to the stage folder.")
    parameterization: Parameterization = Field(
        description="The trained student's; a decoupled_lora student is exported merged (two "
        "transformers, as decoupled).")
    sigma_mid: float
    teacher_id: str
    dtype: str
