"""CUDA-path check on a lent GPU: bf16 sampling of a Z-Image-Turbo-sized transformer (2-step
vs 8-step), the toy teacher's bf16 training step, and a 6B fwd+bwd memory probe.

Runs with random weights (no download): timings of the denoiser do not depend on the weights.
Usage on a GPU machine (diffusers must be importable):

    python benchmarks/device_check.py --out benchmarks/results/device_check.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from diffusers import ZImageTransformer2DModel

# Z-Image Turbo transformer/config.json (6.15B parameters).
ZIMAGE_TURBO = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840,
                    n_layers=30, n_refiner_layers=2, n_heads=30, n_kv_heads=30,
                    cap_feat_dim=2560, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512])
# The toy teacher as planned: pixel space 3x32x32, patch 4, MiniLM captions.
TOY = dict(all_patch_size=(4,), all_f_patch_size=(1,), in_channels=3, dim=128, n_layers=4,
           n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=384,
           axes_dims=[8, 12, 12], axes_lens=[96, 16, 16])
TEACHER_SIGMAS = [1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0]
STUDENT_SIGMAS = [1.0, 0.75, 0.0]


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@torch.inference_mode()
def euler(model, x, caps, sigmas, patch):
    for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):
        t = torch.full((x.shape[0],), 1.0 - a, device=x.device, dtype=x.dtype)
        out = model(list(x.unsqueeze(2)), t, caps, patch_size=patch, return_dict=False)[0]
        v = -torch.stack(out).squeeze(2)  # the model predicts x0 - eps = -v
        x = x + (b - a) * v
    return x


def sampling(model, batch, hw, channels, cap_len, cap_dim, patch, repeats):
    dev = "cuda"
    x = torch.randn(batch, channels, hw, hw, device=dev, dtype=torch.bfloat16)
    caps = [torch.randn(cap_len, cap_dim, device=dev, dtype=torch.bfloat16) for _ in range(batch)]
    t8 = timed(lambda: euler(model, x, caps, TEACHER_SIGMAS, patch), repeats)
    t2 = timed(lambda: euler(model, x, caps, STUDENT_SIGMAS, patch), repeats)
    return {"batch": batch, "latent": [channels, hw, hw], "caption_tokens": cap_len,
            "8_step_s": round(t8, 4), "2_step_s": round(t2, 4), "speedup": round(t8 / t2, 3),
            "per_forward_s": round(t8 / 8, 4)}


def toy_checks(report: dict[str, object]) -> None:
    # 1. Toy teacher: bf16 autocast training step (fwd + bwd + AdamW), then sampling speed.
    toy = ZImageTransformer2DModel(**TOY).cuda()
    opt = torch.optim.AdamW(toy.parameters(), lr=1e-4)
    batch = 256
    x0 = torch.rand(batch, 3, 32, 32, device="cuda") * 2 - 1
    caps = [torch.randn(16, 384, device="cuda") for _ in range(batch)]

    def train_step():
        sigma = torch.rand(batch, device="cuda")
        eps = torch.randn_like(x0)
        xs = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = toy(list(xs.unsqueeze(2)), 1 - sigma, caps, patch_size=4, return_dict=False)[0]
            pred_v = -torch.stack(out).squeeze(2).float()
        loss = torch.nn.functional.mse_loss(pred_v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step_s = timed(train_step, 20)
    report["toy_train_step"] = {"batch": batch, "step_s": round(step_s, 4),
                                "images_per_s": round(batch / step_s),
                                "loss_finite": bool(torch.isfinite(train_step()).item()),
                                "params_m": round(sum(p.numel() for p in toy.parameters()) / 1e6,
                                                  2)}
    print(json.dumps(report["toy_train_step"]), flush=True)
    toy_bf16 = toy.to(torch.bfloat16).eval()
    report["toy_sampling"] = sampling(toy_bf16, 256, 32, 3, 16, 384, 4, 10)
    print(json.dumps(report["toy_sampling"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/device_check.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    report: dict[str, object] = {"device": torch.cuda.get_device_name(),
                                 "torch": torch.__version__}

    toy_checks(report)
    torch.cuda.empty_cache()

    # 2. Z-Image-Turbo-sized transformer, bf16, random weights: 2-step vs 8-step at 1024 px
    #    (latent 16x128x128 = 4096 image tokens) and 512 px.
    start = time.perf_counter()
    with torch.device("cuda"):
        big = ZImageTransformer2DModel(**ZIMAGE_TURBO).to(torch.bfloat16).eval()
    report["zimage_params_b"] = round(sum(p.numel() for p in big.parameters()) / 1e9, 3)
    report["zimage_init_s"] = round(time.perf_counter() - start, 1)
    report["zimage_weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    results = []
    for batch, hw in ((1, 128), (4, 128), (1, 64)):
        r = sampling(big, batch, hw, 16, 128, 2560, 2, 3)
        results.append(r)
        print(json.dumps(r), flush=True)
    report["zimage_sampling"] = results

    # 3. Memory of one bf16 fwd+bwd of the 6B model (gradient checkpointing, no optimizer):
    #    the per-student figure behind the FSDP2 plan.
    big.train()
    big.enable_gradient_checkpointing()
    torch.cuda.reset_peak_memory_stats()
    x = torch.randn(1, 16, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
    caps = [torch.randn(128, 2560, device="cuda", dtype=torch.bfloat16)]
    t = torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        out = big(list(x), t, caps, return_dict=False)[0]
        torch.stack(out).float().pow(2).mean().backward()
        big.zero_grad(set_to_none=False)

    report["zimage_fwd_bwd_s"] = round(timed(fwd_bwd, 2), 3)
    report["zimage_fwd_bwd_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps({k: v for k, v in report.items() if k.startswith("zimage_")}), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
