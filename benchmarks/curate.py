"""Curation throughput and memory at 100k and 1M prompts (exact + near-duplicate removal).

Generates synthetic prompts (8 files per size) with 5% exact duplicates and 5% near
duplicates (case / punctuation / one-character edits), runs the real ``curate`` stage on a
local Ray (2 CPUs by default), and reports prompts/s, wall time and peak resident memory of
the driver plus every Ray process. The ratio is the largest size against the smallest, measured
in the same run on one Ray instance: the 1M run should cost at most ~12x the 100k run
(near-linear scaling).

    .venv/bin/python benchmarks/curate.py --out benchmarks/results/curate.json   # 100k and 1M
    .venv/bin/python benchmarks/curate.py --tiny                       # 1k and 10k, ~15 s

Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import psutil
from machine import describe_machine, print_machine, print_ratio

from flows.env import apply_defaults

apply_defaults()

from pipeline.config import load_config  # noqa: E402
from pipeline.ray_runtime import ray_session  # noqa: E402
from pipeline.stage import run_stage  # noqa: E402
from pipeline.store import ArtifactStore  # noqa: E402
from stages.curate import STAGE  # noqa: E402


def make_vocabulary(rng: random.Random, size: int = 6000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "an", "el", "or", "ph",
                 "st", "gr", "bl", "qu", "th", "io", "ea"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def write_prompts(n: int, folder: Path, files: int = 8, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = make_vocabulary(rng)
    prompts: list[str] = []
    for _ in range(n):
        r = rng.random()
        if prompts and r < 0.05:
            prompts.append(rng.choice(prompts))  # exact duplicate
        elif prompts and r < 0.10:
            base = rng.choice(prompts)
            edit = rng.randrange(3)
            if edit == 0:
                prompts.append(base.capitalize() + ".")
            elif edit == 1:
                prompts.append(base.upper())
            else:
                i = rng.randrange(len(base))
                prompts.append(base[:i] + base[i + 1 :])  # one character deleted
        else:
            prompts.append(" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))))
    per_file = (n + files - 1) // files
    for f in range(files):
        chunk = prompts[f * per_file : (f + 1) * per_file]
        (folder / f"prompts-{f:02d}.txt").write_text("\n".join(chunk) + "\n", encoding="utf-8")


class PeakRss:
    """Samples the resident memory of this process and all its descendants (Ray's GCS,
    raylet and workers) every 0.2 s."""

    def __init__(self) -> None:
        self.peak_total = 0
        self.peak_driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            try:
                driver = me.memory_info().rss
                total = driver
                for child in me.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench(n: int, root: Path, cpus: int) -> dict[str, object]:
    data = root / f"data-{n}"
    data.mkdir()
    write_prompts(n, data)
    cfg = load_config(
        "smoke",
        [f"curate.sources=[{{path: '{data}/*.txt'}}]", "curate.eval_fraction=0.01",
         "curate.rows_per_shard=100000", "curate.batch_size=8192", f"ray.num_cpus={cpus}"],
        workspace=str(root / f"ws-{n}"),
    )
    with PeakRss() as rss:
        start = time.perf_counter()
        outcome = run_stage(STAGE, cfg, ArtifactStore(cfg.workspace))
        wall = time.perf_counter() - start
    m = outcome.manifest
    return {
        "prompts": n,
        "wall_s": round(wall, 2),
        "prompts_per_s": round(n / wall, 1),
        "peak_rss_total_mb": round(rss.peak_total / 2**20),
        "peak_rss_driver_mb": round(rss.peak_driver / 2**20),
        "kept": m.counts["kept"],
        "exact_duplicate": m.dropped["exact_duplicate"],
        "near_duplicate": m.dropped["near_duplicate"],
        "timings": m.timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="Prompt counts, smallest first (at least two: the first is the "
                        "baseline of the ratio).")
    parser.add_argument("--tiny", action="store_true", help="--sizes 1000 10000")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance.")
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    args = parser.parse_args()
    sizes = [1_000, 10_000] if args.tiny else sorted(args.sizes)
    if len(sizes) < 2:
        parser.error("--sizes: give at least two sizes (the smallest is the baseline)")
    machine = describe_machine("cpu")
    print_machine(machine)
    results = []
    with tempfile.TemporaryDirectory(prefix="twostep-bench-") as tmp:
        cfg = load_config("smoke", [f"ray.num_cpus={args.cpus}"])
        with ray_session(cfg.ray):  # one Ray instance for all sizes: start-up is not measured
            for n in sizes:
                r = bench(n, Path(tmp), args.cpus)
                results.append(r)
                print(json.dumps(r), flush=True)
    small, large = results[0], results[-1]
    size_ratio = large["prompts"] / small["prompts"]
    time_ratio = large["wall_s"] / small["wall_s"]
    report: dict[str, object] = {
        "machine": machine, "ray_cpus": args.cpus, "results": results,
        "ratios": {
            "size": size_ratio,
            "time": round(time_ratio, 2),
            "memory": round(large["peak_rss_total_mb"] / small["peak_rss_total_mb"], 2),
            "time_per_prompt": round(time_ratio / size_ratio, 3),
        },
        "target_time_ratio_max": 12 * size_ratio / 10,
    }
    print_ratio("time", time_ratio,
                f"{large['prompts']:,} vs {small['prompts']:,} prompts, "
                f"target <= {12 * size_ratio / 10:.0f}x")
    print_ratio("memory", report["ratios"]["memory"],  # type: ignore[index]
                f"peak RSS {small['peak_rss_total_mb']} -> {large['peak_rss_total_mb']} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
