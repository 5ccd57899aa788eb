"""Shared fixtures. Prefect and Ray state is kept inside a per-session temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from flows.env import apply_defaults

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="twostep-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_TMP / "prefect"))
apply_defaults()  # the same process defaults as the CLI and the flows
os.environ.pop("RAY_ADDRESS", None)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _stop_temporary_prefect_servers():
    """Stop the temporary Prefect servers that in-process flows started, while the session's
    output is open: Prefect stops them at interpreter exit and logs that to a stream pytest
    has closed by then (a "--- Logging error ---" traceback after the test summary)."""
    yield
    import sys

    if "prefect.server.api.server" in sys.modules:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the in-process tests (stages reuse an initialized Ray)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             _temp_dir=str(_SESSION_TMP / "ray"),
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def messy_sources(tmp_path: Path) -> dict[str, Path]:
    """Prompt files with every kind of mess curation must count (see test_curate)."""
    txt = tmp_path / "prompts.txt"
    txt.write_bytes(
        b"a red circle on the left\n"  # 0 kept
        b"a red circle on the left\n"  # 1 exact_duplicate of 0
        b"A red circle on the left.\n"  # 2 near_duplicate of 0 (case + full stop)
        b"\n"  # 3 empty
        b"   \t \n"  # 4 empty
        + b"x" * 5000 + b"\n"  # 5 too_long_chars
        + b"bad \xff\xfe utf8 here\n"  # 6 malformed_utf8
        b"tab\tand\x07control   chars  here\r\n"  # 7 kept, cleaned
        b"Cafe\xcc\x81 on the corner\n"  # 8 kept (NFC -> Caf\xc3\xa9)
        b"Caf\xc3\xa9 on the corner\n"  # 9 exact_duplicate of 8 after NFC
        b"buy cheap pills now\n"  # 10 blocklist
        b"ab\n"  # 11 too_short_chars
    )
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text(
        "id,prompt,extra\n"
        '1,"a blue square, on the right, large",x\n'  # 0 kept, commas inside quotes
        "2,a green triangle at the top\n"  # 1 malformed_record (2 fields, header has 3)
        '3,"a yellow shape ""quoted"" in the middle",y\n'  # 2 kept
        "4,a red circle on the left,z\n",  # 3 exact_duplicate of txt row 0
        encoding="utf-8",
    )
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        '{"prompt": "a magenta circle in the top left corner"}\n'  # 0 kept
        '{"caption": "no prompt field here"}\n'  # 1 missing_field
        "{broken json\n"  # 2 malformed_record
        '{"prompt": 5}\n'  # 3 malformed_record
        "\n"  # 4 empty
        '{"prompt": null}\n'  # 5 missing_field
        '{"prompt": "A MAGENTA circle in the top-left corner!"}\n',  # 6 near_duplicate of 0
        encoding="utf-8",
    )
    return {"txt": txt, "csv": csv_path, "jsonl": jsonl}


@pytest.fixture(scope="session")
def zimage_folder(tmp_path_factory) -> Path:
    """A miniature Z-Image diffusers folder (see tests/zimage_miniature.py)."""
    from tests.zimage_miniature import build_miniature_zimage

    folder = tmp_path_factory.mktemp("zimage-mini")
    build_miniature_zimage(folder)
    return folder
