"""Driver side of training: check everything before any worker starts, run the workers (one: a
plain Ray task; two or more: Ray Train's ``TorchTrainer``, DDP or FSDP2 over gloo on CPU, NCCL
on GPUs), turn their outcome into a clear result or error."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError, ConfigError, TwostepError
from pipeline.store import ArtifactStore
from pipeline.student.checkpoint import (
    checkpoint_state,
    latest_checkpoint,
    resume_layout,
    verify_checkpoint,
)
from pipeline.student.train import STATUS_FILE, TrainJob, train_one_worker, train_worker
from pipeline.teachers.describe import OTHER_TEACHER_HINT, describe_teacher, same_teacher
from schemas.config import LoraConfig, TeacherConfig
from schemas.manifest import TeacherSamplesManifest


class TrainingError(TwostepError):
    """Training stopped: a non-finite loss, a stop request, or a worker failure."""


def check_samples(store: ArtifactStore, samples: TeacherSamplesManifest,
                  teacher: TeacherConfig, workers: int = 1, phase: str = "training") -> None:
    """The shard set is non-empty and holds a train sample for each of ``workers`` (a rank
    reads every n-th sample where shards are fewer than ranks), every shard is where the
    manifest says with its size, and it was made by the configured teacher."""
    stage_dir = f"{samples.stage}/{samples.key}"
    train = samples.splits.get("train")
    if train is None or not train.shards or train.num_samples == 0:
        raise ArtifactError(f"{store.uri(stage_dir)}: the teacher sample set has no train "
                            f"samples")
    if train.num_samples < workers:
        raise ConfigError(f"{phase}.num_workers: {workers} workers, but the teacher samples "
                          f"({store.uri(stage_dir)}) hold {train.num_samples} train sample(s),"
                          f" not one per worker; set {phase}.num_workers <= "
                          f"{train.num_samples} or sample more prompts "
                          f"(sample_teacher.max_train_prompts)")
    store.verify_files(stage_dir, [s for split in samples.splits.values() for s in split.shards],
                       full=False, way_out="recompute the teacher samples with distill run "
                                           "--only sample_teacher --force")
    desc = describe_teacher(teacher)
    if not same_teacher(samples.teacher.teacher_id, desc.teacher_id):
        raise ConfigError(f"the teacher samples were made by {samples.teacher.teacher_id}, the "
                          f"configured teacher is {desc.teacher_id} ({OTHER_TEACHER_HINT})")


def student_on_meta(teacher: TeacherConfig, parameterization: str,
                    lora: LoraConfig | None = None):
    """The student of ``teacher``'s architecture on the meta device (no weights, no memory):
    for checking names and shapes before anything is loaded."""
    import torch
    from diffusers import ZImageTransformer2DModel

    from pipeline.student.model import TwoStepStudent

    desc = describe_teacher(teacher)
    config = json.loads((desc.folder / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        model = ZImageTransformer2DModel.from_config(config)
        return TwoStepStudent.from_teacher(model, parameterization, 0.5, lora=lora, take=True)


def check_student_weights(path: Path, teacher: TeacherConfig, parameterization: str,
                          lora: LoraConfig | None = None) -> None:
    """The phase-1 weights fit the teacher's architecture and the parameterization (names and
    shapes, read from the safetensors header; nothing is loaded)."""
    from safetensors import SafetensorError, safe_open

    student = student_on_meta(teacher, parameterization, lora)
    expected = {student.file_key(n): tuple(p.shape) for n, p in student.trainable().items()}
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
    for name, shape in expected.items():
        got = shapes.get(name)
        if got != shape:
            found = "missing" if got is None else f"shape {got}"
            raise ArtifactError(f"{path}: {name} is {found}, the teacher's architecture "
                                f"({parameterization}) needs {shape} (another architecture?)")


def check_worker_cpus(num_workers: int, cpus_per_worker: int, cpus: float, where: str) -> None:
    """Refuse ``num_workers`` x ``cpus_per_worker`` that ``cpus`` (of ``where``) cannot hold:
    Ray Train would wait forever for a placement group that cannot be placed."""
    if num_workers * cpus_per_worker > cpus:
        raise ConfigError(f"{num_workers} worker(s) x {cpus_per_worker} CPU(s) need "
                          f"{num_workers * cpus_per_worker} CPUs; {where} has {int(cpus)} "
                          f"(lower num_workers or cpus_per_worker)")


def check_resume(out_dir: Path, layout: dict[str, Any]) -> None:
    """A checkpoint left in ``out_dir`` resumes exactly only when its files verify against
    its checksums and under the layout that wrote it (world size, strategy,
    parameterization): anything else is refused here, in one line, before any worker
    starts."""
    latest = latest_checkpoint(out_dir)
    if latest is None:
        return
    verify_checkpoint(latest)  # a corrupt checkpoint never resumes silently
    state = checkpoint_state(latest)
    written = {"world_size": state.get("world_size", 1), "strategy": state.get("strategy", "ddp"),
               "parameterization": state.get("parameterization", layout["parameterization"])}
    if written != layout:
        def describe(d):
            return (f"{d['world_size']} worker(s), strategy {d['strategy']}, "
                    f"{d['parameterization']}")
        raise ConfigError(
            f"{latest}: the checkpoint was written with {describe(written)}; this run has "
            f"{describe(layout)}. Resume with num_workers={written['world_size']} "
            f"strategy={written['strategy']}, or start the stage over with --force (the data "
            f"order depends on the number of workers)")


def run_training(job: TrainJob, num_workers: int, cpus_per_worker: int,
                 use_gpu: str) -> dict[str, Any]:
    """Train on ``num_workers`` workers of ``cpus_per_worker`` CPUs (and a GPU each where
    ``use_gpu`` says so); return ``train_state.json`` plus the MLflow run id.
    A worker's :class:`TwostepError` becomes a :class:`TrainingError` with its message.

    One worker needs no process group: a plain Ray task with the same resources runs it
    (:func:`train_one_worker`), without Ray Train's controller, placement group and storage,
    which cost 12-16 s per run on 2 CPUs. Two or more run on Ray Train (:func:`train_worker`)."""
    import ray

    out = Path(job.out_dir)
    check_resume(out, resume_layout(num_workers, job.config.strategy, job.parameterization))
    (out / STATUS_FILE).unlink(missing_ok=True)
    cluster = ray.cluster_resources()
    gpus = int(cluster.get("GPU", 0))
    check_worker_cpus(num_workers, cpus_per_worker, cluster.get("CPU", 0), "the Ray cluster")
    if use_gpu == "always" and gpus < num_workers:
        raise ConfigError(f"use_gpu=always with {num_workers} workers, but the Ray cluster has "
                          f"{gpus} GPU(s)")
    gpu = use_gpu == "always" or (use_gpu == "auto" and gpus >= num_workers)
    job = job.model_copy(update={"use_gpu": gpu})
    try:
        if num_workers == 1:
            _one_worker(job, cpus_per_worker, gpu)
        else:
            _ray_train(job, num_workers, cpus_per_worker, gpu)
    except Exception as exc:  # Ray wraps worker errors; the status file has the message
        status = _status(out)
        if status.get("status") == "error":
            raise TrainingError(status["message"]) from None
        raise TrainingError(f"training workers failed: {_worker_error(exc)}") from exc
    status = _status(out)
    if status.get("status") != "done":
        raise TrainingError(f"training ended without finishing (status {status or 'missing'})")
    (out / STATUS_FILE).unlink()
    state = json.loads((out / "train_state.json").read_text())
    return {**state, "mlflow_run_id": status.get("mlflow_run_id")}


def _one_worker(job: TrainJob, cpus: int, gpu: bool) -> None:
    """``train_one_worker`` as one Ray task (not retried: a rerun resumes from the
    checkpoint). Ray runs a GPU task in a process of its own, so no CUDA cache outlives it."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=1 if gpu else 0, max_retries=0)(train_one_worker)
    ref = task.remote(job)
    try:
        ray.get(ref)
    except KeyboardInterrupt:  # an interrupted driver must not leave its worker training
        # Only a task still running: force-cancelling one that has just ended (a worker error
        # as it arrives) trips a fatal check in Ray 2.60's task manager and kills the driver.
        if not ray.wait([ref], timeout=0)[0]:
            ray.cancel(ref, force=True)
        raise


def _ray_train(job: TrainJob, num_workers: int, cpus: int, gpu: bool) -> None:
    """``train_worker`` on ``num_workers`` Ray Train workers (one process group)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": cpus, **({"GPU": 1} if gpu else {})}
    with tempfile.TemporaryDirectory(prefix="twostep-raytrain-") as storage:
        TorchTrainer(
            train_worker,
            train_loop_config={"job": job},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=job.run_name, storage_path=storage),
        ).fit()


def _status(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATUS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _worker_error(exc: BaseException) -> str:
    """The worker's own exception line (Ray's message starts with its wrapper's text)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    pattern = re.compile(r"^[\w.]*(Error|Exception|NonFiniteLoss|StoppedEarly)\b.*?: ")
    found = [line for line in lines if pattern.match(line) and "WorkerGroupError" not in line]
    return found[-1] if found else (lines[0] if lines else type(exc).__name__)
