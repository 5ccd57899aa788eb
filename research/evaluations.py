"""What the research scripts that revisit `evaluate` runs share: an evaluation's manifests,
its eval batch with the teacher, and the command-line loop over evaluate keys (machine line,
timing, JSON output)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def stage_manifest(workspace: Path, stage: str, key: str) -> dict:
    return json.loads((workspace / stage / key / "manifest.json").read_text())


def input_key(manifest: dict, stage: str) -> str:
    return next(i["key"] for i in manifest["inputs"] if i["stage"] == stage)


def eval_batch(workspace: Path, evaluation: dict) -> tuple[Any, Any, dict[str, Any]]:
    """The evaluation's teacher samples manifest, the toy teacher and the eval batch it
    scored (``evaluate.max_samples`` samples, the stored noise, captions and teacher ``x0``)."""
    from pipeline.samples.reader import TeacherSampleReader, collate_samples
    from pipeline.store import ArtifactStore
    from pipeline.teachers import load_teacher
    from schemas.manifest import TeacherSamplesManifest

    samples = TeacherSamplesManifest.model_validate(
        stage_manifest(workspace, "sample_teacher", input_key(evaluation, "sample_teacher")))
    teacher = load_teacher("toy", None, device="cpu")
    reader = TeacherSampleReader.from_manifest(ArtifactStore(str(workspace)), samples, "eval")
    batch = collate_samples(list(islice(reader, evaluation["config"]["max_samples"])))
    return samples, teacher, batch


def main_over_evaluations(description: str, measure: Callable[[Path, str, Any], dict],
                          show: Callable[[str, dict], None],
                          add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                          ) -> int:
    """Parse ``--workspace``, ``--evaluate KEY...`` (default: the latest), ``--out`` and the
    script's own arguments; run ``measure(workspace, key, args)`` per key on 2 threads,
    ``show`` each result, and write ``{"machine": ..., "results": [...]}`` to ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workspace", type=Path, default=Path("runs/toy"))
    parser.add_argument("--evaluate", nargs="*", default=None,
                        help="evaluate stage keys (default: the latest)")
    parser.add_argument("--out", type=Path)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    import torch
    from machine import describe_machine, print_machine

    torch.set_num_threads(2)
    info = describe_machine("cpu")
    print_machine(info)
    keys = args.evaluate or [json.loads(
        (args.workspace / "evaluate" / "latest.json").read_text())["key"]]
    results = []
    for key in keys:
        start = time.perf_counter()
        result = measure(args.workspace, key, args)
        result["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
        show(key, result)
    if args.out:
        args.out.write_text(json.dumps({"machine": info, "results": results}, indent=1) + "\n")
    return 0
