"""The machine a benchmark ran on, in one place: every benchmark records and prints it with its
numbers (a CPU timing means little without the CPU's model and what torch can use on it).

    from machine import describe_machine, print_machine, print_ratio   # in benchmarks/*.py
"""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    from pipeline.precision import cpu_model as from_cpuinfo

    return from_cpuinfo() or platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def describe_machine(device: str | torch.device | None = None) -> dict[str, object]:
    """CPU model, core count, ``torch.backends.cpu.get_cpu_capability()`` (e.g. ``AVX2``,
    ``AVX512``: it decides whether bf16 autocast pays on a CPU), torch threads, memory, torch
    version and, when ``device`` is CUDA (or ``None`` and CUDA is available), the GPU's name."""
    info: dict[str, object] = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    use_cuda = (torch.cuda.is_available() if device is None
                else torch.device(device).type == "cuda")
    if use_cuda:
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict[str, object]) -> str:
    """One line for logs: ``GPU name`` (if any), CPU model, capability, cores/threads."""
    cpu = (f"{info['cpu_model']} ({info['cpu_capability']}, {info['cpu_cores']} cores, "
           f"{info['torch_threads']} torch threads)")
    return f"{info['gpu']}; host {cpu}" if info.get("gpu") else cpu


def print_machine(info: dict[str, object]) -> None:
    print(f"machine: {machine_line(info)}", flush=True)


def print_ratio(name: str, value: float, what: str) -> None:
    """``ratio NAME: VALUEx (WHAT)``, the line every benchmark prints for each of its ratios
    (``tests/benchmarks`` looks for it)."""
    print(f"ratio {name}: {value:.2f}x ({what})", flush=True)
