"""The run configuration: one pydantic section per stage plus workspace, Ray and tracking.

Loaded from a YAML preset in ``configs/`` (see :mod:`pipeline.config`) with ``--set a.b=value``
overrides. Each stage's cache key hashes only *its own* section, so changing a training knob
never invalidates curation.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from schemas.base import StrictModel

STAGE_NAMES: tuple[str, ...] = (
    "curate",
    "sample_teacher",
    "train_init",
    "train_e2e",
    "evaluate",
    "export",
)
"""Every stage of the pipeline, in execution order. Stage names are used by ``--only``, by the
per-stage deployments and as workspace folder names."""


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
    include_dashboard: bool = Field(False, description="Start the Ray dashboard locally.")


class TrackingConfig(StrictModel):
    """Experiment tracking (MLflow)."""

    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI. None: a file store at <workspace>/mlruns.",
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
    batch_size: int = Field(4096, ge=1, description="Rows per Ray Data batch.")

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
        "auto", description="Weights dtype; auto is bfloat16 on CUDA, float32 on CPU."
    )
    height: int = Field(32, ge=8, description="Image height in pixels (toy: 32).")
    width: int = Field(32, ge=8, description="Image width in pixels (toy: 32).")
    steps: int = Field(8, ge=1, le=1000, description="Teacher sampling steps (Euler).")

    @model_validator(mode="after")
    def _zimage_needs_path(self) -> TeacherConfig:
        if self.kind == "zimage" and not self.path:
            raise ValueError("teacher.path is required for kind 'zimage' (a local Z-Image "
                             "Turbo diffusers folder)")
        return self


class SampleTeacherConfig(StrictModel):
    """Teacher trajectories into WebDataset shards: per prompt ``samples_per_prompt`` noise
    seeds, each sampled with ``teacher.steps`` Euler steps; the latent at ``sigma_mid`` (the
    student's step boundary) and the final latent are kept."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
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
    batch_size: int = Field(64, ge=1, description="Samples per teacher batch (speed only).")
    num_actors: int = Field(
        1, ge=1, description="Sampling actors when the cluster has no GPU (speed only). With "
        "GPUs there is one actor per GPU.")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs (and torch threads) per actor.")


class DistillConfig(StrictModel):
    """The whole run. Later stages add their sections here as they land."""

    name: str = Field("run", min_length=1, description="Run name (the preset name by default).")
    workspace: str | None = Field(
        None, description="Artifact root (local path or fsspec URL). None: ./runs/<name>."
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    curate: CurateConfig
    sample_teacher: SampleTeacherConfig = Field(default_factory=SampleTeacherConfig)
