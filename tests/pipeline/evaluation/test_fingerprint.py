"""The evaluate stage's cache key: exactly the files its numbers are computed from."""

from __future__ import annotations

from PIL import Image

from pipeline.evaluation.fingerprint import scorer_fingerprint
from pipeline.evaluation.image_folder import image_files
from schemas.config import FIDConfig, RealMetricsConfig


def test_the_fid_reference_is_keyed_by_the_images_fid_reads(tmp_path):
    """Upper-case suffixes were read but not keyed (a changed reference was a cache hit), a
    subfolder's images keyed but never read; weights of any file name are keyed."""
    ref = tmp_path / "ref"
    (ref / "sub").mkdir(parents=True)
    for name in ("a.png", "B.JPG", "sub/c.png"):
        Image.new("RGB", (4, 4)).save(ref / name)
    weights = tmp_path / "inception.weights"  # safetensors under another name
    weights.write_bytes(b"weights")
    metrics = RealMetricsConfig(fid=FIDConfig(weights=str(weights), reference_dir=str(ref)))

    def key() -> dict[str, str]:
        return scorer_fingerprint("zimage", metrics, {})

    assert [f.name for f in image_files(ref)] == ["B.JPG", "a.png"]
    before = key()
    assert set(before) == {"fid:inception.weights", "fid_reference:B.JPG",
                           "fid_reference:a.png"}
    Image.new("RGB", (4, 4), (255, 0, 0)).save(ref / "B.JPG", format="JPEG")
    assert key()["fid_reference:B.JPG"] != before["fid_reference:B.JPG"]
    Image.new("RGB", (4, 4), (255, 0, 0)).save(ref / "sub" / "c.png")
    weights.write_bytes(b"other weights")
    assert key()["fid:inception.weights"] != before["fid:inception.weights"]
