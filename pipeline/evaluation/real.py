"""Real-domain metrics for the Z-Image scale, as plugins of the evaluate stage.

Each plugin loads its network from a local path given in the config (nothing is downloaded)
and scores every generator's images:

- ``fid``: FID and KID of each generator against the teacher's full-step images from the same
  noise, and against a folder of reference images when one is given, on pool3 features of the
  FID InceptionV3 (:mod:`pipeline.evaluation.inception`).
- ``clip``: CLIP score of each generator's images against their prompts, with a Hugging Face
  ``CLIPModel`` folder (e.g. ``openai/clip-vit-large-patch14`` saved locally).

torch-fidelity, clean-fid and open_clip all import torchvision, which does not load beside the
pinned CPU torch (2.13.0) on our machines; the networks here are plain torch or transformers
and take the same published weights (converted to safetensors for Inception).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from pipeline.errors import ArtifactError
from pipeline.evaluation.image_folder import image_files
from pipeline.evaluation.metrics import frechet_distance, unpaired_frechet_distance
from schemas.config import CLIPScoreConfig, FIDConfig, RealMetricsConfig


class ImageSetMetric(Protocol):
    """A real-domain metric plugin.

    ``prepare`` sees the reference images once (the teacher's full-step images, ``(N, 3, H, W)``
    in [0, 1]); ``score`` returns named values for one generator's images (same shape, same
    order as ``prompts``; ``groups[i]`` identifies the prompt of sample ``i``, shared by its
    seeds: :func:`~pipeline.evaluation.metrics.groups_of`)."""

    name: str

    def prepare(self, reference: torch.Tensor) -> None: ...

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              groups: Sequence[int]) -> dict[str, float]: ...


def kernel_inception_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased MMD^2 between features ``a`` ``(N, D)`` and
    ``b`` ``(M, D)`` under the kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over ``subsets``
    random subsets of ``min(subset_size, N, M)`` rows of each; returns (mean, std)."""
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    dim = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        off_diagonal = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum()
                        - k_yy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off_diagonal - 2 * k_xy.mean()))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _batched(fn, images: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(images[i:i + batch]).float().cpu()
                          for i in range(0, len(images), batch)])


def load_image_folder(folder: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """All PNG/JPEG/WebP images of a folder (sorted), RGB, ``(N, 3, H, W)`` in [0, 1]; resized
    to ``size`` (H, W) when given, otherwise they must share one size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise ArtifactError(f"{folder}: no PNG/JPEG/WebP images")
    images = []
    for path in files:
        try:
            image = Image.open(path).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ArtifactError(f"{path}: cannot read image: {exc}") from None
        if size is not None:
            image = image.resize((size[1], size[0]), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        if images and array.shape != images[0].shape:
            raise ArtifactError(f"{path}: size {tuple(array.shape[1:])} differs from "
                                f"{tuple(images[0].shape[1:])} of {files[0].name}")
        images.append(array)
    return torch.stack(images).float() / 255.0


class FIDKID:
    """FID and KID against the teacher's images from the same noise (``fid_teacher``,
    ``kid_teacher``), FID against the teacher's images of the same prompts from other noise
    where at least two prompts have 2+ seeds (``fid_teacher_unpaired``, see
    :func:`~pipeline.evaluation.metrics.unpaired_frechet_distance`), and, with
    ``reference_dir``, against real images (``fid_data``, ``kid_data``)."""

    name = "fid"

    def __init__(self, cfg: FIDConfig) -> None:
        from pipeline.evaluation.inception import load_fid_inception

        self.cfg = cfg
        self.device = _device()
        self.model = load_fid_inception(cfg.weights, self.device)
        self.references: dict[str, torch.Tensor] = {}
        if cfg.reference_dir:
            self.references["data"] = self.features(load_image_folder(cfg.reference_dir))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features ``(N, 2048)`` of images ``(N, 3, H, W)`` in [0, 1]."""
        return _batched(lambda x: self.model(x.to(self.device).float()), images,
                        self.cfg.batch_size)

    def prepare(self, reference: torch.Tensor) -> None:
        self.references["teacher"] = self.features(reference)

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              groups: Sequence[int]) -> dict[str, float]:
        feats = self.features(images)
        out: dict[str, float] = {}
        for name, ref in self.references.items():
            out[f"fid_{name}"] = round(frechet_distance(feats, ref), 4)
            kid, _ = kernel_inception_distance(feats, ref, self.cfg.kid_subsets,
                                               self.cfg.kid_subset_size)
            out[f"kid_{name}"] = round(kid, 6)
        unpaired = unpaired_frechet_distance(feats, self.references["teacher"], groups)
        if math.isfinite(unpaired):
            out["fid_teacher_unpaired"] = round(unpaired, 4)
        return out


# OpenAI CLIP's preprocessing, used when the folder has no preprocessor_config.json.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScore:
    """CLIP score (Hessel et al. 2021, scaled as torchmetrics does): ``100 * max(cos(image,
    prompt), 0)`` averaged over images, as ``clip_score``.

    Images are resized (bicubic, shortest side) and centre-cropped to the model's input size
    and normalised with the folder's ``preprocessor_config.json`` (OpenAI's values if absent);
    prompts are truncated to the text model's maximum length."""

    name = "clip"

    def __init__(self, cfg: CLIPScoreConfig) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.cfg = cfg
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            raise ArtifactError(f"{folder}: not a CLIP model folder (no config.json); save "
                                f"one with CLIPModel.save_pretrained and its tokenizer")
        self.device = _device()
        try:
            self.model = CLIPModel.from_pretrained(folder, use_safetensors=True)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{folder}: cannot load the CLIP model: {exc}") from None
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = _CLIP_MEAN, _CLIP_STD
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            settings = json.loads(pre.read_text())
            mean = tuple(settings.get("image_mean", mean))
            std = tuple(settings.get("image_std", std))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def prepare(self, reference: torch.Tensor) -> None:
        pass  # CLIP score compares images with their prompts, not with a reference

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> normalised ``(N, 3, S, S)`` for the vision tower."""
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        resized = F.interpolate(images.float(), size=(max(self.size, round(h * scale)),
                                                      max(self.size, round(w * scale))),
                                mode="bicubic", align_corners=False).clamp(0, 1)
        top = (resized.shape[-2] - self.size) // 2
        left = (resized.shape[-1] - self.size) // 2
        crop = resized[..., top:top + self.size, left:left + self.size]
        return (crop - self.mean) / self.std

    def embeddings(self, images: torch.Tensor, prompts: Sequence[str]):
        """L2-normalised image and text embeddings, ``(N, E)`` each."""
        out_img, out_txt = [], []
        batch = self.cfg.batch_size
        with torch.inference_mode():
            for i in range(0, len(prompts), batch):
                pixels = self.preprocess(images[i:i + batch]).to(self.device)
                tokens = self.tokenizer(list(prompts[i:i + batch]), padding=True,
                                        truncation=True, max_length=self.max_length,
                                        return_tensors="pt").to(self.device)
                img = self.model.get_image_features(pixel_values=pixels)
                txt = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                   attention_mask=tokens["attention_mask"])
                out_img.append(_tensor(img).float().cpu())
                out_txt.append(_tensor(txt).float().cpu())
        return (F.normalize(torch.cat(out_img), dim=-1),
                F.normalize(torch.cat(out_txt), dim=-1))

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              groups: Sequence[int]) -> dict[str, float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
        img, txt = self.embeddings(images, prompts)
        per_image = 100 * (img * txt).sum(-1).clamp(min=0)
        return {"clip_score": round(float(per_image.mean()), 4)}


def _tensor(output) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features; 4.x returned the tensor.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def real_metric_plugins(cfg: RealMetricsConfig) -> Iterator[ImageSetMetric]:
    """The plugins switched on in ``cfg``, each loaded only when the caller reaches it, so one
    network at a time is in memory (each raises ``ArtifactError`` naming its path when the
    weights are missing or wrong)."""
    if cfg.fid is not None:
        yield FIDKID(cfg.fid)
    if cfg.clip is not None:
        yield CLIPScore(cfg.clip)


def check_paths(cfg: RealMetricsConfig, prefix: str = "evaluate.real_metrics") -> list[str]:
    """Config problems, each naming its field; empty when all is well. Checked before any
    stage starts, as far as it is cheap: the paths, the FID weights' names and shapes (from
    the header), that the reference folder has images and the CLIP folder safetensors
    weights; the plugins load only after every generator's images are made."""
    from pipeline.evaluation.inception import check_fid_weights

    problems = []
    if cfg.fid is not None:
        if not Path(cfg.fid.weights).is_file():
            problems.append(f"{prefix}.fid.weights: file not found: {cfg.fid.weights}")
        else:
            try:
                check_fid_weights(cfg.fid.weights)
            except ArtifactError as exc:
                problems.append(f"{prefix}.fid.weights: {exc}")
        reference = cfg.fid.reference_dir
        if reference and not Path(reference).is_dir():
            problems.append(f"{prefix}.fid.reference_dir: folder not found: {reference}")
        elif reference and len(found := image_files(Path(reference))) < 2:
            # a covariance (FID) and KID's unbiased estimate need two images at least
            problems.append(f"{prefix}.fid.reference_dir: {len(found) or 'no'} PNG/JPEG/WebP "
                            f"image{'s' * (len(found) != 1)} in {reference}; FID and KID need "
                            f"2 or more")
    if cfg.clip is not None:
        folder = Path(cfg.clip.path)
        if not (folder / "config.json").is_file():
            problems.append(f"{prefix}.clip.path: not a CLIP model folder (no config.json): "
                            f"{cfg.clip.path}")
        elif not any(folder.glob("*.safetensors")):
            problems.append(f"{prefix}.clip.path: no safetensors weights in {cfg.clip.path} "
                            f"(save with CLIPModel.save_pretrained, safe_serialization)")
    return problems

