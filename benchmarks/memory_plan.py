"""Memory plan of training Z-Image Turbo (6B): per-device GiB of phase 1 and phase 2 under
ddp / fsdp2 on 1, 2, 4, 8 GPUs, for the decoupled, shared and decoupled_lora
parameterizations, at 512 and 1024 px, batch 1 per GPU, gradient checkpointing on
(formula: ``pipeline/student/memory.py``). Parameters are counted exactly on a meta-device model
of the real config (no weights, no download).

Then the formula is checked against a measured peak: a mid-sized Z-Image transformer trains
a few steps on the CPU (float32, in a fresh process each) as the training loop does it
(student, AdamW, the EMA of the trainable parameters; phase 2 also the discriminator's
backbone pass), and the process's peak resident memory above its baseline is compared with
the plan's CPU total: ``ratio memory_measured_over_plan_<case>`` (1.0 = the plan is exact; a
GPU measurement of the 6B case is in ``device_check_student.py``).

    .venv/bin/python benchmarks/memory_plan.py            # table + CPU check, ~1 minute
    .venv/bin/python benchmarks/memory_plan.py --tiny     # seconds (the test)
    .venv/bin/python benchmarks/memory_plan.py --out benchmarks/results/memory_plan.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

from machine import describe_machine, print_machine, print_ratio
from zimage_turbo import CAPTION_TOKENS, CONFIG, VAE_SCALE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARAMETERIZATIONS = ("decoupled", "shared", "decoupled_lora")
GPUS = (1, 2, 4, 8)
MID = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=768, n_layers=8,
           n_refiner_layers=1, n_heads=12, n_kv_heads=12, norm_eps=1e-05, qk_norm=True,
           cap_feat_dim=256, rope_theta=256.0, t_scale=1000.0, axes_dims=[16, 24, 24],
           axes_lens=[1536, 512, 512])
"""A mid-sized Z-Image transformer (~90 M parameters) for the measured check."""
TINY = {**MID, "dim": 128, "n_layers": 2, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 32,
        "axes_dims": [16, 24, 24]}


def table(shape, lora_rank: int) -> list[dict]:
    from pipeline.student.memory import plan

    rows = []
    for phase in (1, 2):
        for parameterization in PARAMETERIZATIONS:
            for strategy in ("ddp", "fsdp2"):
                for pixels in (512, 1024):
                    cells = {n: None if strategy == "fsdp2" and n == 1 else
                             round(plan(shape, phase, parameterization, strategy, n,
                                        pixels)["total"], 1) for n in GPUS}
                    rows.append({"phase": phase, "parameterization": parameterization,
                                 "strategy": strategy, "pixels": pixels, "gib": cells,
                                 "lora_rank": lora_rank})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| phase | parameterization | strategy | px | " +
          " | ".join(f"{n} GPU" for n in GPUS) + " |")
    print("|---|---|---|---|" + "---|" * len(GPUS))
    for r in rows:
        cells = " | ".join("-" if r["gib"][n] is None else f"{r['gib'][n]:.1f}" for n in GPUS)
        print(f"| {r['phase']} | {r['parameterization']} | {r['strategy']} | {r['pixels']} | "
              f"{cells} |")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure(config: dict, phase: int, parameterization: str, pixels: int, steps: int,
             queue) -> None:
    """In a fresh process: baseline RSS, then ``steps`` training steps; peak RSS above it."""
    import torch

    torch.set_num_threads(2)
    from diffusers import ZImageTransformer2DModel

    from pipeline.flow import transformer_velocity
    from pipeline.student.discriminator import frozen_copy
    from pipeline.student.ema import ParamEMA
    from pipeline.student.model import TwoStepStudent
    from schemas.config import LoraConfig

    torch.manual_seed(0)
    with torch.device("meta"):  # imports and lazy init out of the baseline (PEFT's too)
        TwoStepStudent.from_teacher(ZImageTransformer2DModel(**config), "decoupled_lora", 0.75,
                                    lora=LoraConfig(), take=True)
    baseline = _rss_kib("VmRSS")
    teacher = ZImageTransformer2DModel(**config)
    lora = LoraConfig() if parameterization == "decoupled_lora" else None
    backbone = frozen_copy(teacher) if phase == 2 and lora is None else None
    student = TwoStepStudent.from_teacher(teacher, parameterization, 0.75, lora=lora,
                                          take=True)
    del teacher
    student.enable_gradient_checkpointing()
    if backbone is not None:
        backbone.enable_gradient_checkpointing()
    trainable = student.trainable()
    ema = ParamEMA(trainable)
    opt = torch.optim.AdamW(list(trainable.values()), lr=1e-5)
    side = pixels // VAE_SCALE
    caps = [torch.randn(CAPTION_TOKENS, config["cap_feat_dim"])]
    for step in range(steps):
        noise = torch.randn(1, config["in_channels"], side, side)
        x_mid, x0 = student(noise, caps, x_mid_in=noise if phase == 1 else None)
        loss = x_mid.pow(2).mean() + x0.pow(2).mean()
        if phase == 2:
            sigma = torch.full((1,), 0.5)
            if lora is None:
                v = transformer_velocity(backbone, x0, sigma, caps)
            else:
                with student.base_only() as base:
                    v = transformer_velocity(base, x0, sigma, caps)
            loss = loss + v.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(0.99, step)
    queue.put((_rss_kib("VmHWM") - baseline) * 1024 / 2**30)


def measure(config: dict, phase: int, parameterization: str, pixels: int, steps: int) -> float:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(config, phase, parameterization, pixels,
                                                     steps, queue))
    process.start()
    value = queue.get(timeout=1800)
    process.join()
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Small check model (seconds).")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="Write a JSON report here.")
    args = parser.parse_args(argv)
    from pipeline.student.memory import TransformerShape, plan
    from schemas.config import LoraConfig

    info = describe_machine("cpu")
    print_machine(info)
    shape = TransformerShape.of(CONFIG, LoraConfig(rank=args.lora_rank,
                                                   alpha=float(args.lora_rank)))
    print(f"Z-Image Turbo transformer: {shape.params:,} parameters ({shape.params / 1e9:.2f} B); "
          f"largest block {shape.block_params:,}; one LoRA adapter (rank {args.lora_rank}, "
          f"attention and feed-forward) {shape.lora_params:,}")
    rows = table(shape, args.lora_rank)
    print_table(rows)
    check_config = TINY if args.tiny else MID
    check_pixels, steps = (128, 1) if args.tiny else (512, 2)
    check_shape = TransformerShape.of(check_config, LoraConfig())
    checks = []
    for phase, parameterization in ((1, "decoupled"), (2, "decoupled"), (2, "decoupled_lora")):
        planned = plan(check_shape, phase, parameterization, "ddp", 1, check_pixels,
                       gpu=False)["total"]
        measured = measure(check_config, phase, parameterization, check_pixels, steps)
        case = f"phase{phase}_{parameterization}"
        print_ratio(f"memory_measured_over_plan_{case}", measured / planned,
                    f"CPU float32, {check_shape.params / 1e6:.0f} M-parameter transformer, "
                    f"{check_pixels} px: measured {measured:.2f} GiB, plan {planned:.2f} GiB")
        checks.append({"case": case, "measured_gib": measured, "plan_gib": planned,
                       "params": check_shape.params, "pixels": check_pixels})
    if args.out:
        ratios = {f"memory_measured_over_plan_{c['case']}": c["measured_gib"] / c["plan_gib"]
                  for c in checks}
        args.out.write_text(json.dumps({"machine": info, "shape": shape.__dict__,
                                        "table": rows, "checks": checks, "ratios": ratios},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
