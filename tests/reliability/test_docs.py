"""docs/reliability.md lists every test of this folder (and none that is gone)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO_ROOT

HERE = Path(__file__).resolve().parent


def test_every_reliability_test_is_in_the_table():
    doc = (REPO_ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    tests = {node.name for path in HERE.glob("test_*.py")
             for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    listed = set(re.findall(r"`(test_\w+)`", doc))
    assert tests - listed == set(), "tests missing from docs/reliability.md"
    assert listed - tests == set(), "docs/reliability.md lists tests that do not exist"
