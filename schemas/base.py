"""Base model for every config section and manifest: strict, closed, self-describing."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown fields (``extra="forbid"``).

    Every config section and manifest derives from it, so a typo in a YAML key or a manifest
    written by an incompatible version is an error instead of a silently ignored value.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
