"""GPU check of the pipeline's CUDA paths (needs torch with CUDA and diffusers; nothing else):

1. teacher sampling as ``sample_teacher`` does it (batched Euler, latent recorded at
   sigma_mid, decode, PNG and .npy encoding) versus a naive ``ZImagePipeline.__call__`` loop,
   one prompt at a time, on the shipped toy teacher (its 8x8x8 latent; bf16 autocast for
   both): ratio stage loop / naive loop;
2. end-to-end generation latency, 2-step student versus 8-step teacher (toy), batch 1 and 64:
   ratio teacher time / student time;
3. the phase-2 training step on the toy architecture (two generators, teacher-backbone
   discriminator), bf16 autocast: samples/s;
4. a memory probe for the 6B case: one phase-2 generator forward + backward with two
   Z-Image-Turbo-sized generators and a frozen 6B discriminator backbone, bf16 weights,
   gradient checkpointing, batch 1 (no optimizer states: those are sharded by FSDP2);
5. a whole 6B ``decoupled_lora`` phase-2 step (one bf16 base, two float32 adapters, AdamW,
   EMA, the discriminator on the base) at 512 and 1024 px: peak memory against the memory
   plan, ratio measured/plan.

Caption features are random (no text encoder on the GPU machine); weights of the 6B models
are random (``zimage_turbo.CONFIG``; timings and memory do not depend on them). Each ratio's
baseline is measured in the same run.

    python benchmarks/device_check_student.py --out $OUT/device_check_student.json   # GPU
    .venv/bin/python benchmarks/device_check_student.py --tiny     # CPU dry run, ~10 s

``--tiny`` runs every path at toy sizes and the memory probe on a scaled-down Z-Image
(``zimage_turbo.tiny_config()``): on a CPU it checks that the script runs, its numbers mean
nothing. Without a GPU only ``--tiny`` runs. Writes its JSON report only to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine, print_machine, print_ratio
from zimage_turbo import CAPTION_TOKENS, CONFIG, VAE_SCALE, tiny_config

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the pipeline package without an install (a bare GPU machine)
    sys.path.insert(1, str(ROOT))

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script (--tiny)
QUICK = False


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def toy_parts(report: dict) -> None:
    """The toy teacher's CUDA paths: sampling (naive pipeline loop vs the stage's loop), the
    2-step vs 8-step generation latency, and the phase-2 training step."""
    from pipeline.teachers.toy import ToyTeacher

    teacher = ToyTeacher.load(device=DEV)
    # bf16 autocast on the GPU; off in a CPU dry run (slow on CPUs without AVX512-BF16).
    bf16 = dict(device_type=DEV, dtype=torch.bfloat16, enabled=DEV == "cuda")
    gen = torch.Generator().manual_seed(0)

    def caps(n: int) -> list[torch.Tensor]:
        return [torch.randn(16, 384, generator=gen).to(DEV) for _ in range(n)]

    toy_sampling(report, teacher, bf16, caps)
    toy_latency(report, teacher, bf16, caps)
    toy_phase2_step(report, teacher, bf16, caps)


def toy_sampling(report: dict, teacher, bf16: dict, caps) -> None:
    """The naive ``ZImagePipeline`` loop, one prompt at a time, vs the stage's batched loop
    (encoding of the stored arrays and PNGs included)."""
    from pipeline.generate import noise_for_seeds, to_uint8
    from pipeline.samples.format import npy_bytes, png_bytes
    from pipeline.teachers.toy import toy_zimage_pipeline

    latent = teacher.latent_shape(32, 32)
    side = 8 * latent[1]  # ZImagePipeline's latent is H / 8
    pipe = toy_zimage_pipeline(teacher)
    pipe.set_progress_bar_config(disable=True)
    n_naive = 4 if QUICK else 64
    c1, z1 = caps(n_naive), noise_for_seeds(list(range(n_naive)), latent).to(DEV)

    def naive() -> None:
        for i in range(n_naive):
            with torch.autocast(**bf16):
                x0 = pipe(prompt_embeds=[c1[i]], height=side, width=side, num_inference_steps=8,
                          guidance_scale=0.0, latents=z1[i:i + 1], output_type="latent").images
            png_bytes(to_uint8(teacher.decode(x0).cpu())[0])

    naive_s = timed(naive, repeats=1)
    rates = {}
    for batch in (8,) if QUICK else (64, 256, 1024):
        cb, zb = caps(batch), noise_for_seeds(list(range(batch)), latent).to(DEV)

        def batched(cb=cb, zb=zb) -> None:
            with torch.autocast(**bf16):
                result = teacher.sample(cb, zb, 8, record_sigmas=(0.75,))
            images = to_uint8(teacher.decode(result.final).cpu())
            mid, final = result.recorded[0.75].cpu(), result.final.cpu()
            for i in range(len(images)):
                png_bytes(images[i])
                npy_bytes(mid[i].numpy())
                npy_bytes(final[i].numpy())

        rates[batch] = batch / timed(batched, repeats=2)
    report["toy_sampling"] = {
        "naive_pipeline_images_per_s": round(n_naive / naive_s, 1),
        "stage_loop_images_per_s": {str(b): round(r, 1) for b, r in rates.items()},
        "latent": list(latent),
        "speedup_vs_naive": round(max(rates.values()) / (n_naive / naive_s), 2)}
    print(report["toy_sampling"], flush=True)
    print_ratio("stage_loop_vs_naive_pipeline", report["toy_sampling"]["speedup_vs_naive"],
                "batched Euler + encoding (best batch) vs ZImagePipeline one prompt at a time")


def toy_latency(report: dict, teacher, bf16: dict, caps) -> None:
    """Generation latency: student 2 steps vs teacher 8 steps (denoise + decode)."""
    from pipeline.student.model import TwoStepStudent

    latent = teacher.latent_shape(32, 32)
    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75).to(DEV).eval()
    latency = {}
    for batch in (1, 4) if QUICK else (1, 64):
        cb, zb = caps(batch), torch.randn(batch, *latent, device=DEV)

        def run_teacher(cb=cb, zb=zb) -> None:
            with torch.autocast(**bf16):
                teacher.decode(teacher.sample(cb, zb, 8).final)

        def run_student(cb=cb, zb=zb) -> None:
            with torch.autocast(**bf16), torch.no_grad():
                teacher.decode(student.sample(zb, cb))

        repeats = 2 if QUICK else 5
        t8, t2 = timed(run_teacher, repeats), timed(run_student, repeats)
        latency[str(batch)] = {"teacher_8_step_s": round(t8, 5), "student_2_step_s": round(t2, 5),
                               "speedup": round(t8 / t2, 2)}
        print_ratio(f"student_vs_teacher_batch_{batch}", t8 / t2,
                    "8-step teacher vs 2-step student, denoise + decode")
    report["toy_generate_latency"] = latency
    print(latency, flush=True)


def toy_phase2_step(report: dict, teacher, bf16: dict, caps) -> None:
    """One phase-2 training step of the toy architecture: generator and discriminator."""
    from pipeline.student.discriminator import Discriminator, frozen_copy
    from pipeline.student.losses import (
        discriminator_adversarial,
        generator_adversarial,
        regression,
    )
    from pipeline.student.model import TwoStepStudent

    latent = teacher.latent_shape(32, 32)
    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75).to(DEV)
    disc = Discriminator(frozen_copy(teacher.transformer, torch.bfloat16), [1, 3], 128).to(DEV)
    opt_g = torch.optim.AdamW(student.parameters(), 5e-5)
    opt_d = torch.optim.AdamW(disc.parameters(), 2e-4, betas=(0.0, 0.99))
    batch = 4 if QUICK else 256
    cb = caps(batch)
    noise, x_mid_t, x0_t = (torch.randn(batch, *latent, device=DEV) for _ in range(3))

    def train_step() -> None:
        sigma = torch.rand(batch, device=DEV) * 0.65 + 0.05
        eps = torch.randn_like(x0_t)
        disc.requires_grad_(False)
        with torch.autocast(**bf16):
            x_mid, x0 = student(noise, cb)
            adv = generator_adversarial(disc(x0, cb, sigma, eps).float(), "non_saturating")
        loss = 0.1 * adv + regression(x_mid, x_mid_t) + regression(x0, x0_t)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        with torch.autocast(**bf16):
            logits = disc(torch.cat([x0_t, x0.detach()]), cb + cb, torch.cat([sigma, sigma]),
                          torch.cat([eps, eps])).float()
        loss_d = discriminator_adversarial(*logits.chunk(2), "non_saturating")
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

    step_s = timed(train_step, 2 if QUICK else 5)
    report["toy_phase2_step"] = {"batch": batch, "step_s": round(step_s, 4),
                                 "samples_per_s": round(batch / step_s, 1)}
    print(report["toy_phase2_step"], flush=True)


def big_probe(report: dict, hw: int) -> None:
    """Phase-2 generator fwd+bwd for two 6B generators and a frozen 6B discriminator (with
    ``--tiny``: the scaled-down config)."""
    from diffusers import ZImageTransformer2DModel

    from pipeline.student.discriminator import Discriminator
    from pipeline.student.model import TwoStepStudent

    config = tiny_config() if QUICK else CONFIG
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEV):
        g1 = ZImageTransformer2DModel(**config)
        g2 = ZImageTransformer2DModel(**config)
        backbone = ZImageTransformer2DModel(**config)
    torch.set_default_dtype(previous)
    student = TwoStepStudent(g1, g2, 0.75)
    for g in (g1, g2):
        g.enable_gradient_checkpointing()
    backbone.requires_grad_(False)
    n = config["n_layers"]
    disc = Discriminator(backbone.eval(), sorted({max(0, n * k // 3 - 1) for k in (1, 2, 3)}),
                         256).to(DEV)  # 30 layers: 9, 19, 29
    init_s = time.perf_counter() - start
    weights_gib = torch.cuda.memory_allocated() / 2**30 if DEV == "cuda" else None
    lat = hw // VAE_SCALE
    caps = [torch.randn(16 if QUICK else CAPTION_TOKENS, config["cap_feat_dim"], device=DEV)]
    noise = torch.randn(1, config["in_channels"], lat, lat, device=DEV)
    target = torch.randn_like(noise)

    def step() -> None:
        with torch.autocast(DEV, dtype=torch.bfloat16):
            x_mid, x0 = student(noise, caps)
            logits = disc(x0, caps, torch.tensor([0.4], device=DEV), torch.randn_like(x0))
        loss = logits.float().mean() + (x_mid.float() - target).pow(2).mean()
        loss.backward()
        for p in student.parameters():
            p.grad = None

    try:
        step_s = timed(step, 2)
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else None
        report[f"zimage_phase2_gen_step_{hw}px"] = {
            "config": "tiny_config()" if QUICK else "CONFIG (Z-Image Turbo)",
            "init_s": round(init_s, 1),
            "weights_gib": None if weights_gib is None else round(weights_gib, 2),
            "step_s": round(step_s, 3), "peak_gib": None if peak is None else round(peak, 2),
            "params_per_model_b": round(sum(p.numel() for p in g1.parameters()) / 1e9, 3)}
    except torch.cuda.OutOfMemoryError as exc:
        report[f"zimage_phase2_gen_step_{hw}px"] = {"oom": str(exc).splitlines()[0]}
    print(report[f"zimage_phase2_gen_step_{hw}px"], flush=True)
    student = disc = g1 = g2 = backbone = None  # free the GPU memory before the next size
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def _lora_training_step(config: dict, hw: int):
    """The ``decoupled_lora`` modules as the training loop builds them on ``DEV`` and one
    whole phase-2 step over them; returns ``(step, trainable parameter count)``."""
    from diffusers import ZImageTransformer2DModel

    from pipeline.student.discriminator import Discriminator
    from pipeline.student.ema import ParamEMA
    from pipeline.student.model import TwoStepStudent
    from schemas.config import LoraConfig

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if DEV == "cuda" else torch.float32)
    with torch.device(DEV):
        base = ZImageTransformer2DModel(**config)
    torch.set_default_dtype(previous)
    student = TwoStepStudent.from_teacher(base, "decoupled_lora", 0.75, dtype=base.dtype,
                                          lora=LoraConfig(), take=True).to(DEV)
    student.enable_gradient_checkpointing()
    n = config["n_layers"]
    disc = Discriminator(student.g1, sorted({max(0, n * k // 3 - 1) for k in (1, 2, 3)}), 256,
                         backbone_context=student.base_only).to(DEV)
    trainable = student.trainable()
    ema = ParamEMA(trainable)
    opt_g = torch.optim.AdamW(list(trainable.values()), lr=1e-5)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-4)
    lat = hw // VAE_SCALE
    caps = [torch.randn(16 if QUICK else CAPTION_TOKENS, config["cap_feat_dim"], device=DEV)]
    noise = torch.randn(1, config["in_channels"], lat, lat, device=DEV)
    target = torch.randn_like(noise)
    sigma = torch.tensor([0.4], device=DEV)
    autocast = dict(device_type=DEV, dtype=torch.bfloat16, enabled=DEV == "cuda")

    def step() -> None:
        disc.requires_grad_(False)
        with torch.autocast(**autocast):
            x_mid, x0 = student(noise, caps)
            logits = disc(x0, caps, sigma, torch.randn_like(x0))
        loss = logits.float().mean() + (x_mid.float() - target).pow(2).mean()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        ema.update(0.99, 0)
        disc.requires_grad_(True)
        with torch.autocast(**autocast):
            d = disc(torch.cat([target, x0.detach()]), caps + caps, torch.cat([sigma, sigma]),
                     torch.randn(2, *x0.shape[1:], device=DEV))
        opt_d.zero_grad(set_to_none=True)
        d.float().mean().backward()
        opt_d.step()

    return step, sum(p.numel() for p in trainable.values()), caps[0].shape[0]


def lora_probe(report: dict, hw: int) -> None:
    """A whole ``decoupled_lora`` phase-2 step at 6B as the training loop runs it: the frozen
    bf16 base with two float32 adapters (rank 16), gradient checkpointing, the discriminator on
    the same base with adapters off, AdamW on the adapters and their EMA; generator forward +
    backward + optimizer step, then the discriminator's heads step. Peak memory against the
    plan of ``pipeline/student/memory.py`` (ratio measured/plan)."""
    from pipeline.student.memory import TransformerShape, plan
    from schemas.config import LoraConfig

    config = tiny_config() if QUICK else CONFIG
    key = f"zimage_lora_phase2_step_{hw}px"
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = None
    try:
        step, trainable, caption_tokens = _lora_training_step(config, hw)
        step_s = timed(step, 2)
        peak = torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else None
        shape = TransformerShape.of(config, LoraConfig(), latent_scale=VAE_SCALE)
        planned = plan(shape, 2, "decoupled_lora", "ddp", 1, hw,
                       caption_tokens=caption_tokens, gpu=DEV == "cuda")["total"]
        report[key] = {"config": "tiny_config()" if QUICK else "CONFIG (Z-Image Turbo)",
                       "step_s": round(step_s, 3),
                       "peak_gib": None if peak is None else round(peak, 2),
                       "plan_gib": round(planned, 2), "trainable_params": trainable}
        if peak is not None:
            name = f"lora_memory_measured_over_plan_{hw}px"
            report.setdefault("ratios", {})[name] = peak / planned
            print_ratio(name, peak / planned, f"6B decoupled_lora phase-2 step, {peak:.1f} GiB "
                        f"measured, {planned:.1f} GiB planned")
    except torch.cuda.OutOfMemoryError as exc:
        report[key] = {"oom": str(exc).splitlines()[0]}
    print(report[key], flush=True)
    step = None  # frees the modules the step closes over
    gc.collect()
    if DEV == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Write the JSON report here.")
    parser.add_argument("--skip-big", action="store_true", help="no 6B memory probe")
    parser.add_argument("--tiny", "--quick", action="store_true",
                        help="tiny sizes and a scaled-down Z-Image (a CPU dry run)")
    args = parser.parse_args()
    if DEV != "cuda" and not args.tiny:
        parser.error("no GPU here: the full check needs CUDA; --tiny is the CPU dry run")
    global QUICK
    QUICK = args.tiny
    machine = describe_machine(DEV)
    print_machine(machine)
    report: dict = {"device": DEV, "machine": machine, "tiny": args.tiny,
                    "toy_autocast": "bfloat16" if DEV == "cuda" else "off (CPU dry run)"}
    try:
        toy_parts(report)
        if not args.skip_big:
            for hw in (128,) if QUICK else (512, 1024):
                big_probe(report, hw)
                lora_probe(report, hw)
        report["ratios"] = {**report.get("ratios", {}),
            "stage_loop_vs_naive_pipeline": report["toy_sampling"]["speedup_vs_naive"],
            **{f"student_vs_teacher_batch_{b}": r["speedup"]
               for b, r in report["toy_generate_latency"].items()}}
    finally:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            print("wrote", args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
