"""What an evaluation's numbers depend on besides its inputs, for the ``evaluate`` cache key
(no torch: a cache hit computes this without loading any network)."""

from __future__ import annotations

from schemas.config import RealMetricsConfig


def scorer_fingerprint(teacher_kind: str, real_metrics: RealMetricsConfig,
                       extra_students: dict[str, str]) -> dict[str, str]:
    """Identity of what a report's numbers depend on besides its inputs: the metric networks'
    weights (toy feature network, FID Inception, CLIP), the FID reference images and the
    extra students' manifests."""
    from pathlib import Path

    from pipeline.evaluation.image_folder import image_files
    from pipeline.hashing import file_identity, files_fingerprint, sha256_text

    out = {f"student:{name}": sha256_text((Path(p) / "manifest.json").read_text())
           for name, p in extra_students.items() if (Path(p) / "manifest.json").is_file()}
    if teacher_kind == "toy":
        from pipeline.toy.paths import FEATURES_DIR

        out.update({f"toy_features:{k}": v
                    for k, v in files_fingerprint(FEATURES_DIR, ("model.safetensors",)).items()})
    fid, clip = real_metrics.fid, real_metrics.clip
    if fid is not None and Path(fid.weights).is_file():  # whatever its file name
        out[f"fid:{Path(fid.weights).name}"] = file_identity(Path(fid.weights))
    if fid is not None and fid.reference_dir and Path(fid.reference_dir).is_dir():
        # exactly the images FID reads (load_image_folder), no more, no fewer
        out.update({f"fid_reference:{f.name}": file_identity(f)
                    for f in image_files(Path(fid.reference_dir))})
    if clip is not None and Path(clip.path).is_dir():
        out.update({f"clip:{k}": v for k, v in files_fingerprint(Path(clip.path),
                                                                   (".",)).items()})
    return out
