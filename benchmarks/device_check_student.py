"""GPU check of the pipeline's CUDA paths (needs torch with CUDA and diffusers; nothing else):

1. teacher sampling as ``sample_teacher`` does it (batched Euler, latent recorded at
   sigma_mid, decode, PNG and .npy encoding) versus a naive ``ZImagePipeline.__call__`` loop,
   one prompt at a time, on the shipped toy teacher (bf16 autocast for both);
2. end-to-end generation latency, 2-step student versus 8-step teacher (toy), batch 1 and 64;
3. the phase-2 training step on the toy architecture (two generators, teacher-backbone
   discriminator), bf16 autocast: samples/s;
4. a memory probe for the 6B case: one phase-2 generator forward + backward with two
   Z-Image-Turbo-sized generators and a frozen 6B discriminator backbone, bf16 weights,
   gradient checkpointing, batch 1 (no optimizer states: those are sharded by FSDP2).

Caption features are random (no text encoder on the GPU machine); weights of the 6B models
are random (timings and memory do not depend on them).

    python benchmarks/device_check_student.py --out $OUT/device_check_student.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

ZIMAGE_TURBO = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840,
                    n_layers=30, n_refiner_layers=2, n_heads=30, n_kv_heads=30,
                    cap_feat_dim=2560, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script (--quick)
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
    from pipeline.generate import noise_for_seeds, to_uint8
    from pipeline.samples.format import npy_bytes, png_bytes
    from pipeline.student.model import TwoStepStudent
    from pipeline.teachers.toy import ToyTeacher, toy_zimage_pipeline

    teacher = ToyTeacher.load(device=DEV)
    bf16 = dict(device_type=DEV, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)

    def caps(n: int) -> list[torch.Tensor]:
        return [torch.randn(16, 384, generator=gen).to(DEV) for _ in range(n)]

    # 1. naive pipeline loop vs the stage's batched loop
    pipe = toy_zimage_pipeline(teacher)
    pipe.set_progress_bar_config(disable=True)
    n_naive = 4 if QUICK else 64
    c1, z1 = caps(n_naive), noise_for_seeds(list(range(n_naive)), (3, 32, 32)).to(DEV)

    def naive() -> None:
        for i in range(n_naive):
            with torch.autocast(**bf16):
                x0 = pipe(prompt_embeds=[c1[i]], height=256, width=256, num_inference_steps=8,
                          guidance_scale=0.0, latents=z1[i:i + 1], output_type="latent").images
            png_bytes(to_uint8(teacher.decode(x0).cpu())[0])

    naive_s = timed(naive, repeats=1)
    rates = {}
    for batch in (8,) if QUICK else (64, 256, 1024):
        cb, zb = caps(batch), noise_for_seeds(list(range(batch)), (3, 32, 32)).to(DEV)

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
        "speedup_vs_naive": round(max(rates.values()) / (n_naive / naive_s), 2)}
    print(report["toy_sampling"], flush=True)

    # 2. generation latency: student 2 steps vs teacher 8 steps (denoise + decode)
    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75).to(DEV).eval()
    latency = {}
    for batch in (1, 4) if QUICK else (1, 64):
        cb, zb = caps(batch), torch.randn(batch, 3, 32, 32, device=DEV)

        def run_teacher(cb=cb, zb=zb) -> None:
            with torch.autocast(**bf16):
                teacher.decode(teacher.sample(cb, zb, 8).final)

        def run_student(cb=cb, zb=zb) -> None:
            with torch.autocast(**bf16), torch.no_grad():
                teacher.decode(student.sample(zb, cb))

        t8, t2 = timed(run_teacher, 5), timed(run_student, 5)
        latency[str(batch)] = {"teacher_8_step_s": round(t8, 5), "student_2_step_s": round(t2, 5),
                               "speedup": round(t8 / t2, 2)}
    report["toy_generate_latency"] = latency
    print(latency, flush=True)

    # 3. the phase-2 training step (toy architecture)
    from pipeline.student.discriminator import Discriminator
    from pipeline.student.losses import (
        discriminator_adversarial,
        generator_adversarial,
        regression,
    )

    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75).to(DEV)
    disc = Discriminator(teacher.transformer, [1, 3], 128, backbone_dtype=torch.bfloat16).to(DEV)
    opt_g = torch.optim.AdamW(student.parameters(), 5e-5)
    opt_d = torch.optim.AdamW(disc.parameters(), 2e-4, betas=(0.0, 0.99))
    batch = 4 if QUICK else 256
    cb = caps(batch)
    noise, x_mid_t, x0_t = (torch.randn(batch, 3, 32, 32, device=DEV) for _ in range(3))

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

    step_s = timed(train_step, 5)
    report["toy_phase2_step"] = {"batch": batch, "step_s": round(step_s, 4),
                                 "samples_per_s": round(batch / step_s, 1)}
    print(report["toy_phase2_step"], flush=True)


def big_probe(report: dict, hw: int) -> None:
    """Phase-2 generator fwd+bwd for two 6B generators and a frozen 6B discriminator."""
    from diffusers import ZImageTransformer2DModel

    from pipeline.student.discriminator import Discriminator
    from pipeline.student.model import TwoStepStudent

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(DEV):
        g1 = ZImageTransformer2DModel(**ZIMAGE_TURBO)
        g2 = ZImageTransformer2DModel(**ZIMAGE_TURBO)
        backbone = ZImageTransformer2DModel(**ZIMAGE_TURBO)
    torch.set_default_dtype(previous)
    student = TwoStepStudent(g1, g2, 0.75)
    for g in (g1, g2):
        g.enable_gradient_checkpointing()
    backbone.requires_grad_(False)
    disc = Discriminator.__new__(Discriminator)  # no copy: the backbone is built for it
    torch.nn.Module.__init__(disc)
    disc.layers = [9, 19, 29]
    disc.__dict__["backbone"] = backbone.eval()
    from pipeline.student.discriminator import Head

    disc.heads = torch.nn.ModuleList(Head(3840, 2560, 256) for _ in disc.layers).to(DEV)
    init_s = time.perf_counter() - start
    weights_gib = torch.cuda.memory_allocated() / 2**30
    lat = hw // 8
    caps = [torch.randn(128, 2560, device=DEV) for _ in range(1)]
    noise = torch.randn(1, 16, lat, lat, device=DEV)
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
        peak = torch.cuda.max_memory_allocated() / 2**30
        report[f"zimage_phase2_gen_step_{hw}px"] = {
            "init_s": round(init_s, 1), "weights_gib": round(weights_gib, 2),
            "step_s": round(step_s, 3), "peak_gib": round(peak, 2),
            "params_per_model_b": round(sum(p.numel() for p in g1.parameters()) / 1e9, 3)}
    except torch.cuda.OutOfMemoryError as exc:
        report[f"zimage_phase2_gen_step_{hw}px"] = {"oom": str(exc).splitlines()[0]}
    print(report[f"zimage_phase2_gen_step_{hw}px"], flush=True)
    student = disc = g1 = g2 = backbone = None  # free the GPU memory before the next size
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU dry run)")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    report: dict = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
                    "torch": torch.__version__}
    try:
        toy_parts(report)
        if not args.skip_big:
            for hw in (512, 1024):
                big_probe(report, hw)
    finally:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
