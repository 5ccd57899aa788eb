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
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.toy.features import HEADS, load_feature_net, render_set
from pipeline.toy.metrics import named_attribute_accuracy, palette_purity
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.teacher import (
    TeacherTrainConfig,
    image_pool,
    shifted_sigmas,
    train_flow_matching,
)
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

    # The same pool as the shipped teacher's (seed 0), encoded into the latent space.
    pixels, cap_ids, caps = image_pool(TeacherTrainConfig(), log)
    with torch.no_grad():
        latents = torch.cat([ae.encoder(pixels[i:i + 1000]) for i in range(0, len(pixels), 1000)])
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

    ema, train_info = train_flow_matching(model, x0_pool, cap_ids, caps,
                                          TeacherTrainConfig(minutes=args.minutes), log,
                                          velocity_fn=velocity)
    step = train_info["steps"]

    net = load_feature_net()
    eval_prompts = generate_prompts(500, seed=4242)
    eval_caps = MiniLMTextEncoder().encode([p.text for p in eval_prompts])
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
        result: dict[str, float] = named_attribute_accuracy(eval_prompts, pred)
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
