"""Which precision is fastest for teacher sampling on this machine, so that ``teacher.dtype:
auto`` is right everywhere.

bf16 autocast on a CPU is fast only where the CPU computes bf16 natively (AVX512-BF16 or
AMX-BF16); elsewhere it is emulated and several times slower than float32 (STACK.md: 2.1
against 12.0 images/s per thread on an AVX2 EPYC). The decision on a CPU:

1. Linux CPU flags without ``avx512_bf16`` / ``amx_bf16``: float32, no measurement;
2. otherwise a short probe (about a second: the matmul shapes of a small transformer, float32
   against bf16 autocast), cached per machine in ``$XDG_CACHE_HOME/twostep/precision.json``
   keyed by CPU model, flags, torch version and the kernel-dispatch variables
   (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``); bf16 only when it is at least
   :data:`MIN_SPEEDUP` faster.

``auto`` is resolved on the machine that runs ``distill`` when the run is local (no Ray
address) and that machine has no GPU; the resolved value is what the cache key hashes and the
manifest records. On GPUs, and on remote clusters, ``auto`` is left to the sampling actors
(bf16 on CUDA, float32 on CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

MIN_SPEEDUP = 1.2
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DISPATCH_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def cache_file() -> Path:
    from pipeline.machine_cache import cache_path

    return cache_path("precision")


def probe_bf16_speedup(seconds: float = 0.4) -> float:
    """float32 time / bf16-autocast time of the matmuls of a small transformer block on this
    CPU (``> 1``: bf16 is faster)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 256, generator=gen)
    w1, w2 = torch.randn(256, 1024, generator=gen), torch.randn(1024, 256, generator=gen)

    def rate(bf16: bool) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            (x @ w1).relu() @ w2  # warm-up
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                (x @ w1).relu() @ w2
                n += 1
        return n / (time.perf_counter() - start)

    return rate(True) / rate(False)


def cpu_prefers_bf16(cpuinfo: str | None = None, cache: Path | None = None,
                     probe=probe_bf16_speedup) -> bool:
    """True when bf16 autocast is measured faster than float32 on this CPU (see the module
    docstring); the probe runs once per machine and torch version."""
    text = cpuinfo
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            text = ""
    flags = cpu_flags(text)
    if flags is not None and not flags & set(NATIVE_BF16_FLAGS):
        return False
    from importlib.metadata import version

    torch_version = version("torch")  # not `import torch`: a cached answer costs no import
    # Kernel-dispatch overrides change the answer on the same CPU (they also let one machine
    # stand in for an older one: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2).
    dispatch = [os.environ.get(name, "") for name in DISPATCH_ENV]
    key = hashlib.sha256(json.dumps([cpu_model(text), sorted(flags or []), torch_version,
                                     *dispatch]).encode()).hexdigest()[:16]
    from pipeline.machine_cache import recall, remember

    path = cache or cache_file()
    record = recall("precision", key, path)
    if record is None or "bf16_speedup" not in record:
        record = {"cpu": cpu_model(text), "torch": torch_version,
                  **{name: value for name, value in zip(DISPATCH_ENV, dispatch, strict=True)
                     if value}, "bf16_speedup": round(probe(), 3)}
        remember("precision", key, record, path)
    return record["bf16_speedup"] >= MIN_SPEEDUP


def _has_gpu() -> bool:
    """A CUDA device on this machine, without importing torch (the driver's files)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def resolve_auto_dtype(cfg):
    """``cfg`` (a :class:`~schemas.config.DistillConfig`) with ``teacher.dtype: auto``
    resolved to ``bfloat16`` or ``float32`` for a local CPU run; unchanged otherwise."""
    if cfg.teacher.dtype != "auto" or cfg.ray.address or os.environ.get("RAY_ADDRESS") \
            or _has_gpu():
        return cfg
    chosen = "bfloat16" if cpu_prefers_bf16() else "float32"
    return cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"dtype": chosen})})
