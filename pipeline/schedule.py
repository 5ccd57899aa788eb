"""The flow-matching schedule without torch: the shifted sigmas and the on-the-grid check (a
cache check or a pre-flight of a stage computes these without importing torch). Convention
as in :mod:`pipeline.flow`: sigma 1 is pure noise, 0 the clean image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import ConfigError

SHIFT = 3.0
"""The toy teacher's schedule shift (Z-Image Turbo's scheduler shift is 3 too)."""

GRID_TOLERANCE = 1e-3
"""How close a sigma must be to a schedule entry to count as on the grid."""


def shifted_sigmas(steps: int, shift: float = SHIFT) -> list[float]:
    """``steps + 1`` sigmas from 1 to 0: ``sigma(s) = shift s / (1 + (shift - 1) s)`` on
    ``s = linspace(1, 0, steps + 1)`` (shift 3, 8 steps: 1, .9545, .9, .8333, .75, .6429, .5,
    .3, 0)."""
    s = np.linspace(1.0, 0.0, steps + 1)
    return [float(v) for v in shift_sigma(s, shift)]


def shift_sigma(u, shift: float = SHIFT):
    """The schedule shift applied to uniform ``u`` in [0, 1] (array or tensor)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def find_sigma(sigma: float, sigmas: Sequence[float], tol: float = GRID_TOLERANCE) -> int | None:
    """Index of ``sigma`` on a schedule (within ``tol``), or None."""
    return next((i for i, s in enumerate(sigmas) if abs(s - sigma) <= tol), None)


def sigma_index(sigma: float, sigmas: Sequence[float], what: str = "sigma") -> int:
    """Index of ``sigma`` on the schedule; a :class:`ConfigError` listing the inner grid
    otherwise (``what`` names the setting in the message, e.g. ``sigma_mid``)."""
    index = find_sigma(sigma, sigmas)
    if index is not None:
        return index
    inner = sigmas[1:-1]
    grid = ", ".join(f"{s:.4f}" for s in inner)
    nearest = min(inner, key=lambda s: abs(s - sigma), default=None)
    way_out = f"; the nearest: {what}={nearest:.4f}" if nearest is not None else ""
    raise ConfigError(f"{what} {sigma} is not on the teacher's {len(sigmas) - 1}-step "
                      f"schedule (choose one of {grid}{way_out})")
