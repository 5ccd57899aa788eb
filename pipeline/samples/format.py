"""The teacher-sample format (see :class:`schemas.manifest.TeacherSamplesManifest`): sample
keys and noise seeds, the deterministic shard plan, and encoding/decoding one sample."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

SHARD_DIGITS = 6


def sample_key(prompt_id: str, k: int) -> str:
    """WebDataset key of sample ``k`` of a prompt (no dots: WebDataset splits keys on them)."""
    return f"{prompt_id}-{k:04d}"


def sample_seed(seed: int, prompt_id: str, k: int) -> int:
    """Noise seed of sample ``k`` of a prompt: a 63-bit hash of (global seed, prompt_id, k), so
    a sample's noise depends on nothing else (not the shard, batch or worker it lands in)."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class PlannedSample:
    key: str
    prompt_id: str
    prompt: str
    k: int
    seed: int


@dataclass(frozen=True)
class ShardUnit:
    """One shard to write: its relative path and the samples in it, in order."""

    split: str
    index: int
    path: str
    samples: tuple[PlannedSample, ...]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:0{SHARD_DIGITS}d}.tar"


def plan_shards(split: str, prompt_ids: list[str], prompts: list[str], samples_per_prompt: int,
                seed: int, samples_per_shard: int) -> list[ShardUnit]:
    """Cut a split's samples (prompt-major: every k of a prompt, then the next prompt) into
    shards of ``samples_per_shard``; the same inputs always give the same plan."""
    samples = [PlannedSample(sample_key(pid, k), pid, text, k, sample_seed(seed, pid, k))
               for pid, text in zip(prompt_ids, prompts, strict=True)
               for k in range(samples_per_prompt)]
    return [ShardUnit(split, i, shard_name(split, i),
                      tuple(samples[start:start + samples_per_shard]))
            for i, start in enumerate(range(0, len(samples), samples_per_shard))]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes (deterministic for the same pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sample(planned: PlannedSample, record: dict[str, object], caption: torch.Tensor,
                  noise: torch.Tensor, x_mid: torch.Tensor, x0: torch.Tensor,
                  image: np.ndarray, dtype: str) -> dict[str, object]:
    """One WebDataset sample dict (``__key__`` plus the fields of ``SAMPLE_FIELDS``)."""
    def arr(t: torch.Tensor) -> bytes:
        return npy_bytes(t.detach().float().cpu().numpy().astype(dtype))

    meta = {"prompt": planned.prompt, "prompt_id": planned.prompt_id, "k": planned.k,
            "seed": planned.seed, **record}
    return {
        "__key__": planned.key,
        "json": json.dumps(meta, sort_keys=True).encode(),
        "caption.npy": arr(caption),
        "noise.npy": arr(noise),
        "x_mid.npy": arr(x_mid),
        "x0.npy": arr(x0),
        "png": png_bytes(image),
    }


def decode_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> array; pickled object arrays are refused (untrusted input)."""
    return np.load(io.BytesIO(data), allow_pickle=False)
