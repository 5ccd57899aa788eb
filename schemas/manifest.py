"""Typed manifests: the contract between stages.

A manifest is written last and atomically into its stage folder
``<workspace>/<stage>/<key>/manifest.json``. A folder without one is unfinished work. Every
output file is listed with its size and sha256 so a reader can verify what it consumes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from schemas.base import StrictModel

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
