"""Probe (not the shipped path): does a tiny learned latent space fix the toy teacher's shapes?

The shipped pixel-space teacher draws blobs (shape accuracy near chance, docs/toy-world.md).
Here a small conv autoencoder (32x32x3 <-> GxGxC) is trained on renders, then the same
``ZImageTransformer2DModel`` recipe (dim 128, 4 layers, patch 1 on the latent) is trained in
that latent space with flow matching, and scored like ``benchmarks/toy_teacher_quality.py``
(300 prompts, seed 4242, the shipped feature network), with a learning curve.

Autoencoder losses (all optional but the first):
- L1 + MSE reconstruction, plus ``--grad-loss`` x L1 of the image gradients (sharper edges);
- ``--latent-noise``: the decoder sees ``z + n * std(z) * N(0, 1)`` (robust, large-margin codes);
- ``--aux``: attribute classifiers on the (noised) latent, 1x1 conv + spatial max (shape
  weighted 1, size/colour/background 0.3), so the labels are readable off the latent;
- ``--layout``: the first 3 latent channels regress a per-shape coverage map (the shape's
  coverage average-pooled to the latent grid, x2, in the channel of its shape), making the
  shape an explicit latent channel like a semantic layout.

    .venv/bin/python benchmarks/toy_latent_teacher_probe.py --layout 1 --aux 0.3 \\
        --latent-noise 0.2 --name layout

Writes ``benchmarks/results/toy_latent_teacher_probe_<name>.json``. About 4 min of
autoencoder and ``--minutes`` of transformer training on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ZImageTransformer2DModel
from torch import nn

from pipeline.toy.features import HEADS, RenderSet, accuracy, load_feature_net, render_set
from pipeline.toy.metrics import named_attribute_accuracy, palette_purity
from pipeline.toy.prompts import BACKGROUNDS, COLORS, generate_prompts
from pipeline.toy.teacher import (
    TeacherTrainConfig,
    image_pool,
    shifted_sigmas,
    teacher_config,
    train_flow_matching,
    velocity,
)
from pipeline.toy.text_encoder import MiniLMTextEncoder

RESULTS = Path(__file__).resolve().parent / "results"


def autoencoder(grid: int, channels: int, width: int = 64) -> tuple[nn.Module, nn.Module]:
    """Encoder ``(N, 3, 32, 32) -> (N, C, G, G)`` and decoder back (tanh), G in {4, 8}."""
    halvings = {8: 2, 4: 3}[grid]
    enc: list[nn.Module] = [nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.SiLU()]
    c = 32
    for _ in range(halvings - 1):
        enc += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.SiLU()]
        c = width
    enc.append(nn.Conv2d(c, channels, 1))
    dec: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
    c = width
    for i in range(halvings):
        out = 32 if i == halvings - 1 else width
        dec += [nn.Upsample(scale_factor=2), nn.Conv2d(c, out, 3, padding=1), nn.SiLU()]
        c = out
    dec += [nn.Conv2d(32, 3, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*enc), nn.Sequential(*dec)


def layout_target(images: torch.Tensor, labels: dict[str, torch.Tensor], idx: torch.Tensor,
                  grid: int) -> torch.Tensor:
    """``(B, 3, G, G)``: the shape's coverage (read back from the anti-aliased render, exact
    for one shape on a flat background), pooled to the grid, in its shape's channel, x2."""
    fg = (torch.tensor([COLORS[c] for c in HEADS["color"]]) / 127.5 - 1)[labels["color"][idx]]
    bg = (torch.tensor([BACKGROUNDS[b] for b in HEADS["background"]]) / 127.5
          - 1)[labels["background"][idx]]
    d = (fg - bg).view(-1, 3, 1, 1)
    coverage = ((images - bg.view(-1, 3, 1, 1)) * d).sum(1, keepdim=True) / d.pow(2).sum(1,
                                                                                       True)
    pooled = F.avg_pool2d(coverage.clamp(0, 1), 32 // grid)
    onehot = F.one_hot(labels["shape"][idx], 3).float().view(-1, 3, 1, 1)
    return 2.0 * pooled * onehot


def train_autoencoder(args, log) -> tuple[nn.Module, nn.Module, dict[str, object]]:
    torch.manual_seed(0)
    enc, dec = autoencoder(args.grid, args.channels, args.ae_width)
    probes = nn.ModuleDict({k: nn.Conv2d(args.channels, len(v), 1)
                            for k, v in HEADS.items() if k != "position"})
    data: RenderSet = render_set(args.ae_samples, seed=11)
    params = [*enc.parameters(), *dec.parameters(), *probes.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    batch = 128
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=args.ae_epochs * math.ceil(args.ae_samples / batch))
    start = time.perf_counter()
    for epoch in range(args.ae_epochs):
        order = torch.randperm(args.ae_samples)
        for b in range(0, args.ae_samples, batch):
            idx = order[b:b + batch]
            x = data.images[idx]
            z = enc(x)
            zn = z + args.latent_noise * z.detach().std() * torch.randn_like(z)
            y = dec(zn)
            loss = (y - x).abs().mean() + (y - x).pow(2).mean() + 1e-4 * z.pow(2).mean()
            if args.grad_loss:
                for dim in (2, 3):
                    loss = loss + args.grad_loss * (y.diff(dim=dim) - x.diff(dim=dim)).abs().mean()
            if args.aux:
                loss = loss + args.aux * sum(
                    (1.0 if k == "shape" else 0.3)
                    * F.cross_entropy(probe(zn).amax(dim=(2, 3)), data.labels[k][idx])
                    for k, probe in probes.items())
            if args.layout:
                target = layout_target(x, data.labels, idx, args.grid)
                loss = loss + args.layout * (z[:, :3] - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        log(f"autoencoder epoch {epoch + 1}: loss {loss.item():.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    enc.eval()
    dec.eval()
    test = render_set(2000, seed=12)
    net = load_feature_net()
    recon = {}
    with torch.no_grad():
        z = enc(test.images)
        for noise in (0.0, 0.3):
            decoded = RenderSet(dec(z + noise * z.std() * torch.randn_like(z)), test.labels)
            recon[f"latent_noise_{noise}"] = {n: round(a, 4)
                                              for n, a in accuracy(net, decoded).items()}
        # Which layout channel holds the most (positive) mass: the shape the latent names.
        named = z[:, :3].clamp(min=0).sum(dim=(2, 3)).argmax(dim=1)
        layout = round(float((named == test.labels["shape"]).float().mean()), 4)
    log(f"autoencoder reconstructions: {recon}; layout channels name the shape: {layout}")
    return enc, dec, {"reconstruction_accuracy": recon, "layout_channel_shape_accuracy": layout,
                      "ae_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="probe")
    parser.add_argument("--grid", type=int, choices=(4, 8), default=8)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--ae-samples", type=int, default=25_000)
    parser.add_argument("--ae-epochs", type=int, default=6)
    parser.add_argument("--ae-width", type=int, default=64, help="Conv width of the autoencoder.")
    parser.add_argument("--grad-loss", type=float, default=1.0)
    parser.add_argument("--latent-noise", type=float, default=0.2)
    parser.add_argument("--aux", type=float, default=0.0)
    parser.add_argument("--layout", type=float, default=0.0)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=600)
    args = parser.parse_args()
    if args.layout and args.channels < 4:
        parser.error("--layout needs at least 4 channels (3 layout + free ones)")
    log = lambda m: print(m, flush=True)  # noqa: E731
    enc, dec, ae_info = train_autoencoder(args, log)

    start = time.perf_counter()
    cfg = TeacherTrainConfig(minutes=args.minutes, lr=args.lr)
    pixels, cap_ids, caps = image_pool(cfg, log)
    with torch.no_grad():
        latents = torch.cat([enc(pixels[i:i + 1000]) for i in range(0, len(pixels), 1000)])
    mean = latents.mean(dim=(0, 2, 3), keepdim=True)
    std = latents.std(dim=(0, 2, 3), keepdim=True)
    model = ZImageTransformer2DModel(**{**teacher_config(patch=1), "in_channels": args.channels})

    net = load_feature_net()
    prompts = generate_prompts(300, seed=4242)
    eval_caps = MiniLMTextEncoder().encode([p.text for p in prompts])
    noise = torch.randn((300, args.channels, args.grid, args.grid),
                        generator=torch.Generator().manual_seed(4242))

    @torch.inference_mode()
    def evaluate(m, steps: int) -> dict[str, float]:
        sig = shifted_sigmas(steps)
        images = []
        for b in range(0, 300, 100):
            x = noise[b:b + 100]
            for s0, s1 in zip(sig[:-1], sig[1:], strict=True):
                x = x + (s1 - s0) * velocity(m, x, torch.full((x.shape[0],), s0),
                                             eval_caps[b:b + 100])
            images.append(dec(x * std + mean))
        imgs = torch.cat(images)
        result = named_attribute_accuracy(prompts, net.predict(imgs))
        result["palette_purity"] = round(palette_purity((imgs + 1) / 2).mean().item(), 4)
        return result

    curve: list[dict[str, object]] = []

    def checkpoint(step: int, ema) -> None:
        curve.append({"step": step, "accuracy_8_step": evaluate(ema.eval(), 8)})
        log(f"step {step}: {curve[-1]['accuracy_8_step']}")

    ema, info = train_flow_matching(model, (latents - mean) / std, cap_ids, caps, cfg, log,
                                    start=start, checkpoint=checkpoint,
                                    checkpoint_every=args.eval_every)
    report = {"args": vars(args), **ae_info, "teacher": info, "curve": curve,
              "final_8_step": evaluate(ema, 8), "final_2_step": evaluate(ema, 2)}
    log(f"final: 8 steps {report['final_8_step']}, 2 steps {report['final_2_step']}")
    out = RESULTS / f"toy_latent_teacher_probe_{args.name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
