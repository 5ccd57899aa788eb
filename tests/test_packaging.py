"""What a non-editable install gets: the wheel holds every file of the shipped toy models
(the package-data glob once took one folder level only, so the teacher's transformer and
autoencoder, one level deeper, were missing from any wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO_ROOT


def test_the_wheel_holds_every_shipped_toy_model_file(tmp_path):
    source = tmp_path / "src"  # a copy: building in the checkout would leave build/ there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for package in ("pipeline", "stages", "flows", "schemas"):
        shutil.copytree(REPO_ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.rejected"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if "/toy/assets/" in n}
    assets = REPO_ROOT / "pipeline" / "toy" / "assets"
    shipped = {f"pipeline/toy/assets/{p.relative_to(assets).as_posix()}"
               for p in assets.rglob("*") if p.is_file() and ".rejected" not in str(p)}
    assert "pipeline/toy/assets/teacher/transformer/diffusion_pytorch_model.safetensors" in shipped
    assert packaged == shipped
