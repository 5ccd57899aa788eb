"""teacher.dtype auto: bf16 only where the CPU computes it natively and a cached probe
measures it faster; explicit dtypes, remote clusters and GPUs are left alone."""

from __future__ import annotations

import pytest

from pipeline import precision
from pipeline.config import load_config

AVX2 = "model name\t: Some CPU\nflags\t\t: fpu sse2 avx2 fma\n"
AVX512_BF16 = "model name\t: Other CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"


def test_no_native_bf16_is_float32_without_a_probe(tmp_path):
    def probe():
        raise AssertionError("no probe on a CPU without native bf16")

    assert precision.cpu_prefers_bf16(AVX2, tmp_path / "p.json", probe) is False
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(("speedup", "expected"), [(2.5, True), (1.05, False)])
def test_native_bf16_is_probed_once_per_machine(tmp_path, speedup, expected):
    calls = []

    def probe():
        calls.append(1)
        return speedup

    cache = tmp_path / "p.json"
    assert precision.cpu_prefers_bf16(AVX512_BF16, cache, probe) is expected
    assert precision.cpu_prefers_bf16(AVX512_BF16, cache, probe) is expected
    assert len(calls) == 1 and "Other CPU" in cache.read_text()


def test_a_kernel_dispatch_override_is_probed_on_its_own(tmp_path, monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA make the same CPU behave like an older one."""
    cache, answers = tmp_path / "p.json", iter([2.5, 0.3])
    for name in precision.DISPATCH_ENV:
        monkeypatch.delenv(name, raising=False)
    assert precision.cpu_prefers_bf16(AVX512_BF16, cache, lambda: next(answers)) is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert precision.cpu_prefers_bf16(AVX512_BF16, cache, lambda: next(answers)) is False
    assert '"ONEDNN_MAX_CPU_ISA": "AVX2"' in cache.read_text()


def test_the_probe_measures_a_ratio():
    assert precision.probe_bf16_speedup(seconds=0.05) > 0


def test_auto_is_resolved_only_for_local_cpu_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(precision, "_has_gpu", lambda: False)
    auto = load_config("toy")
    assert auto.teacher.dtype == "auto"
    resolved = precision.resolve_auto_dtype(auto)
    assert resolved.teacher.dtype == ("bfloat16" if precision.cpu_prefers_bf16() else "float32")
    explicit = load_config("toy", ["teacher.dtype=float32"])
    assert precision.resolve_auto_dtype(explicit).teacher.dtype == "float32"
    remote = load_config("toy", ["ray.address=ray://head:10001"])
    assert precision.resolve_auto_dtype(remote).teacher.dtype == "auto"
    monkeypatch.setattr(precision, "_has_gpu", lambda: True)
    assert precision.resolve_auto_dtype(auto).teacher.dtype == "auto"  # the actors decide
