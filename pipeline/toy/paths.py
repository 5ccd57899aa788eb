"""Where the shipped toy assets live (no heavy imports: cache keys and pre-flight checks read
these paths without loading torch or diffusers)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_DIR = ASSETS / "teacher"
FEATURES_DIR = ASSETS / "feature_net"
