"""The InceptionV3 feature network of FID/KID, in plain torch (no torchvision).

The architecture is the one the FID literature standardised on: TensorFlow's 2015-12-05
Inception graph as ported to PyTorch by pytorch-fid (and used by torch-fidelity), i.e.
torchvision's InceptionV3 layout with three differences: the average pools inside the
InceptionA, InceptionC and first InceptionE blocks ignore the zero padding
(``count_include_pad=False``, as TensorFlow does), and the last InceptionE block max-pools
where torchvision average-pools. Parameter names follow torchvision (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch1x1.bn.running_mean``, ...), so the published FID weights load by name after a
one-off conversion to safetensors (:func:`convert_fid_weights`).

Features are the 2048-d output of the final average pool ("pool3"). Input: ``(N, 3, H, W)``
images in [0, 1], resized bilinearly to 299x299 and scaled to [-1, 1] (pytorch-fid's input
pipeline; torch-fidelity resizes with a TF1-compatible bilinear kernel, so its numbers differ
slightly from ours on images that are not already 299x299).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ArtifactError

FEATURE_DIM = 2048
INPUT_SIZE = 299


class _Conv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; attribute names match torchvision's
    ``BasicConv2d`` so that state-dict keys do too."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 average pool does not count the zero padding.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | pool-1x1 -> 224 + ``pool_features`` ch."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_tf(x)),
        ], 1)


class _ReductionB(nn.Module):
    """35x35 -> 17x17: stride-2 3x3 | 1x1-3x3-3x3/2 | max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions -> 768 ch."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class _ReductionD(nn.Module):
    """17x17 -> 8x8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, 3, stride=2)], 1)


class _MixedE(nn.Module):
    """8x8 block with split 1x3/3x1 branches -> 2048 ch; ``max_pool`` is the FID graph's quirk
    in its last block."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """``(N, 3, H, W)`` images in [0, 1] -> pool3 features ``(N, 2048)``."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _MixedA(192, 32)
        self.Mixed_5c = _MixedA(256, 64)
        self.Mixed_5d = _MixedA(288, 64)
        self.Mixed_6a = _ReductionB(288)
        self.Mixed_6b = _MixedC(768, 128)
        self.Mixed_6c = _MixedC(768, 160)
        self.Mixed_6d = _MixedC(768, 160)
        self.Mixed_6e = _MixedC(768, 192)
        self.Mixed_7a = _ReductionD(768)
        self.Mixed_7b = _MixedE(1280, max_pool=False)
        self.Mixed_7c = _MixedE(2048, max_pool=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))


def _keep(key: str) -> bool:
    """Keys of a published checkpoint that the feature network uses (not the classifier,
    the auxiliary head or BatchNorm's step counters)."""
    return not (key.startswith(("fc.", "AuxLogits.")) or key.endswith("num_batches_tracked"))


def check_fid_weights(path: str | Path) -> None:
    """Every tensor of the FID network is in the safetensors file with the right shape, read
    from its header (nothing is loaded: cheap enough for the pre-flight); the error names the
    first that is not."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: FID Inception weights not found (convert the published "
                            f"weights with `distill metrics convert-inception`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if _keep(k)}
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: not a safetensors file: {exc}") from None
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()
                    if _keep(k)}
    for key, shape in expected.items():
        if key not in shapes:
            raise ArtifactError(f"{path}: not FID Inception weights ({key} is missing)")
        if shapes[key] != shape:
            raise ArtifactError(f"{path}: {key} has shape {shapes[key]}, the FID Inception "
                                f"expects {shape}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise ArtifactError(f"{path}: not FID Inception weights (unexpected {extra[0]})")


def load_fid_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID network with weights from a safetensors file that passes
    :func:`check_fid_weights`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_fid_weights(path)
    try:  # the header passed; the file may still change or vanish before it is read
        state = {k: v for k, v in load_file(Path(path)).items() if _keep(k)}
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: not a safetensors file: {exc}") from None
    model = FIDInceptionV3()
    model.load_state_dict(state, strict=False)  # only num_batches_tracked stay default
    return model.to(device).eval().requires_grad_(False)


def convert_fid_weights(source: str | Path, target: str | Path) -> int:
    """Convert a published PyTorch FID Inception checkpoint (e.g. pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``) to safetensors; returns the tensor count.

    The checkpoint is read with ``torch.load(weights_only=True)``, which only rebuilds tensors
    and plain containers (no code runs), and is checked against the architecture before the
    target is written (atomically)."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise ArtifactError(f"{source}: file not found")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the user's file
        raise ArtifactError(f"{source}: cannot read as a weights-only PyTorch checkpoint: "
                            f"{exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                               for v in state.values()):
        raise ArtifactError(f"{source}: expected a state dict of tensors")
    from safetensors.torch import save_file

    kept = {k: v.contiguous() for k, v in state.items() if _keep(k)}
    tmp = target.with_name(f".tmp-{target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(tmp))
    try:
        load_fid_inception(tmp)
    except ArtifactError as exc:
        tmp.unlink()
        raise ArtifactError(f"{source}: {str(exc).split(': ', 1)[1]}") from None
    tmp.replace(target)
    return len(kept)
