"""Probe (not the shipped path): does a tiny learned latent space fix the toy teacher's shapes?

The shipped pixel-space teacher draws blobs (shape accuracy at chance, docs/toy-world.md). Here
a small conv autoencoder (32x32x3 <-> 8x8x16) is trained on renders, then the same
``ZImageTransformer2DModel`` recipe (dim 128, 4 layers, patch 1 on the 8x8 latent = 64 tokens)
is trained in that latent space for the same kind of CPU budget, and scored like
``benchmarks/toy_teacher_quality.py``. Writes ``benchmarks/results/toy_latent_teacher_probe.json``.

    .venv/bin/python benchmarks/toy_latent_teacher_probe.py --minutes 30
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.toy.features import HEADS, load_feature_net, render_set
from pipeline.toy.metrics import palette_purity
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.render import render, sample_scene
from pipeline.toy.teacher import SHIFT, shifted_sigmas
from pipeline.toy.text_encoder import MiniLMTextEncoder

LATENT = 16


class ToyAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, LATENT, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(LATENT, 64, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(64, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 3, 3, padding=1), nn.Tanh())


def train_autoencoder(log) -> tuple[ToyAutoencoder, dict[str, float]]:
    data = render_set(30_000, seed=11).images
    ae = ToyAutoencoder()
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    epochs = 5
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3,
                                                total_steps=epochs * math.ceil(len(data) / 128))
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(data))
        for b in range(0, len(data), 128):
            x = data[order[b:b + 128]]
            z = ae.encoder(x)
            loss = (ae.decoder(z) - x).abs().mean() + 1e-3 * z.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"ae epoch {epoch + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    ae.eval()
    test = render_set(2000, seed=12)
    with torch.no_grad():
        recon = ae.decoder(ae.encoder(test.images))
    pred = load_feature_net().predict(recon)
    acc = {n: float(np.mean([getattr(p, n) == HEADS[n][i]
                             for p, i in zip(pred, test.labels[n].tolist(), strict=True)]))
           for n in HEADS}
    return ae, {"recon_accuracy": acc, "ae_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    log = lambda m: print(m, flush=True)  # noqa: E731
    ae, ae_info = train_autoencoder(log)
    ae.requires_grad_(False)
    log(f"autoencoder: {ae_info}")

    rng = random.Random(0)
    prompts = generate_prompts(20_000, seed=1000)
    texts = sorted({p.text for p in prompts})
    encoder = MiniLMTextEncoder()
    caps = encoder.encode(texts)
    index = {t: i for i, t in enumerate(texts)}
    images = np.empty((50_000, 32, 32, 3), dtype=np.uint8)
    cap_ids = np.empty(50_000, dtype=np.int64)
    for i in range(50_000):
        p = prompts[rng.randrange(len(prompts))]
        images[i] = render(sample_scene(p.attributes, rng.getrandbits(63)))
        cap_ids[i] = index[p.text]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        latents = torch.cat([ae.encoder(pixels[i:i + 1000]) for i in range(0, 50_000, 1000)])
    mean, std = latents.mean(dim=(0, 2, 3), keepdim=True), latents.std(dim=(0, 2, 3),
                                                                         keepdim=True)
    x0_pool = (latents - mean) / std

    model = ZImageTransformer2DModel(
        all_patch_size=(1,), all_f_patch_size=(1,), in_channels=LATENT, dim=128, n_layers=4,
        n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=384, axes_dims=[8, 12, 12],
        axes_lens=[96, 16, 16])

    def velocity(m, x, sigma, c):
        out = m(list(x.unsqueeze(2)), 1.0 - sigma, c, patch_size=1, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    start, step, losses = time.perf_counter(), 0, []
    budget = args.minutes * 60
    while time.perf_counter() - start < budget:
        frac = (time.perf_counter() - start) / budget
        for group in opt.param_groups:
            group["lr"] = 5e-4 * min(1.0, (step + 1) / 300) * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.randint(0, len(x0_pool), (48,), generator=gen)
        x0 = x0_pool[idx]
        eps = torch.randn(x0.shape, generator=gen)
        u = torch.rand(48, generator=gen)
        shifted = torch.rand(48, generator=gen) < 0.5
        sigma = torch.where(shifted, SHIFT * u / (1 + (SHIFT - 1) * u), u)
        s = sigma.view(-1, 1, 1, 1)
        pred = velocity(model, (1 - s) * x0 + s * eps, sigma,
                        [caps[int(i)] for i in cap_ids[idx.numpy()]])
        loss = torch.nn.functional.mse_loss(pred, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 200 == 0:
            log(f"step {step}: loss {np.mean(losses[-200:]):.4f} "
                f"({time.perf_counter() - start:.0f} s)")

    net = load_feature_net()
    eval_prompts = generate_prompts(500, seed=4242)
    eval_caps = encoder.encode([p.text for p in eval_prompts])
    noise = torch.stack([torch.randn((LATENT, 8, 8), generator=torch.Generator().manual_seed(i))
                         for i in range(500)])
    report: dict[str, object] = {"steps": step, "minutes": args.minutes, **ae_info}
    for steps in (8, 2):
        sig = shifted_sigmas(steps)
        finals = []
        with torch.inference_mode():
            for b in range(0, 500, 100):
                x = noise[b:b + 100]
                for a, c in zip(sig[:-1], sig[1:], strict=True):
                    x = x + (c - a) * velocity(ema, x, torch.full((x.shape[0],), a),
                                               eval_caps[b:b + 100])
                finals.append(ae.decoder(x * std + mean))
        imgs = torch.cat(finals)
        pred = net.predict(imgs)
        result = {}
        for name in HEADS:
            pairs = [(getattr(p.attributes, name), getattr(q, name))
                     for p, q in zip(eval_prompts, pred, strict=True)
                     if getattr(p.attributes, name) is not None]
            result[name] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
        purity = palette_purity((imgs + 1) / 2)
        result["palette_purity"] = round(purity.mean().item(), 4)
        result["valid_rate"] = round((purity >= 0.9).float().mean().item(), 4)
        report[f"{steps}_step"] = result
        log(f"{steps} steps: {result}")
    out = Path(__file__).resolve().parent / "results" / "toy_latent_teacher_probe.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
