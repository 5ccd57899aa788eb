"""Base model for every config section and manifest: strict, closed, self-describing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Parameterization = Literal["decoupled", "shared", "decoupled_lora"]
"""How the two student steps hold their weights (``train_init.parameterization``), recorded in
every manifest downstream of training."""


class StrictModel(BaseModel):
    """A pydantic model that rejects unknown fields (``extra="forbid"``).

    Every config section and manifest derives from it, so a typo in a YAML key or a manifest
    written by an incompatible version is an error instead of a silently ignored value.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
