"""Probe: how does the latent space's design move a toy teacher's accuracy (learning curves)?

Found the recipe of the shipped latent teacher (docs/toy-world.md). Here the toy autoencoder
(:mod:`pipeline.toy.autoencoder`, 32x32x3 <-> GxGxC) is trained on renders, then the same
``ZImageTransformer2DModel`` recipe (dim 128, 4 layers, patch 1 on the latent) is trained in
that latent space with flow matching, and scored like ``research/toy_teacher_quality.py``
(300 prompts, seed 4242, the shipped feature network), with a learning curve.

Autoencoder losses (all optional but the first):
- L1 + MSE reconstruction, plus ``--grad-loss`` x L1 of the image gradients (sharper edges);
- ``--latent-noise``: the decoder sees ``z + n * std(z) * N(0, 1)`` (robust, large-margin codes);
- ``--aux``: attribute classifiers on the (noised) latent, 1x1 conv + spatial max (shape
  weighted 1, size/colour/background 0.3), so the labels are readable off the latent;
- ``--layout``: the first 3 latent channels regress a per-shape coverage map (the shape's
  coverage average-pooled to the latent grid, x2, in the channel of its shape), making the
  shape an explicit latent channel like a semantic layout.

    .venv/bin/python research/toy_latent_teacher_probe.py --layout 1 --aux 0.3 \\
        --latent-noise 0.2 --name layout
    .venv/bin/python research/toy_latent_teacher_probe.py --ae-samples 256 --ae-epochs 1 \\
        --minutes 1 --max-steps 4 --eval-every 2 --pool-prompts 200 --pool-images 256 \\
        --eval-prompts 16 --out /tmp/probe.json         # ~40 s: checks that it runs

Writes ``research/results/toy_latent_teacher_probe_<name>.json`` (or ``--out``). About 4 min
of autoencoder and ``--minutes`` of transformer training on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import ZImageTransformer2DModel

from pipeline.flow import euler, transformer_velocity
from pipeline.schedule import shifted_sigmas
from pipeline.toy.autoencoder import AutoencoderConfig, AutoencoderTrainConfig, train_autoencoder
from pipeline.toy.features import load_feature_net
from pipeline.toy.metrics import named_attribute_accuracy, palette_purity
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.teacher import TeacherTrainConfig, image_pool, teacher_config, train_flow_matching
from pipeline.toy.text_encoder import MiniLMTextEncoder

RESULTS = Path(__file__).resolve().parent / "results"


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
    parser.add_argument("--decoder-epochs", type=int, default=0,
                        help="Autoencoder phase 2 (decoder alone; the shipped build uses 3). "
                        "0 keeps the recorded probe results comparable.")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=600)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--pool-prompts", type=int, default=20_000,
                        help="Prompts drawn for the pool (their distinct texts are encoded).")
    parser.add_argument("--pool-images", type=int, default=50_000,
                        help="Renders in the transformer's training pool.")
    parser.add_argument("--eval-prompts", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None,
                        help="Default: research/results/toy_latent_teacher_probe_<name>.json")
    args = parser.parse_args()
    if args.channels < 4:
        parser.error("--channels: at least 4 (3 layout channels + free ones)")
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:5.0f} s] {m}", flush=True)  # noqa: E731
    ae, ae_info = train_autoencoder(
        AutoencoderConfig(grid=args.grid, channels=args.channels, width=args.ae_width),
        AutoencoderTrainConfig(samples=args.ae_samples, epochs=args.ae_epochs,
                               grad_loss=args.grad_loss, latent_noise=args.latent_noise,
                               aux=args.aux, layout=args.layout,
                               decoder_epochs=args.decoder_epochs), log)

    start = time.perf_counter()
    cfg = TeacherTrainConfig(minutes=args.minutes, lr=args.lr, guidance=1.0,  # flow matching
                             max_steps=args.max_steps, pool_prompts=args.pool_prompts,
                             pool_images=args.pool_images)
    pixels, cap_ids, caps = image_pool(cfg, log)
    latents = ae.fit_latent_statistics(pixels)
    model = ZImageTransformer2DModel(**teacher_config(patch=1, in_channels=args.channels))

    net = load_feature_net()
    n_eval = args.eval_prompts
    prompts = generate_prompts(n_eval, seed=4242)
    eval_caps = MiniLMTextEncoder().encode([p.text for p in prompts])
    noise = torch.randn((n_eval, args.channels, args.grid, args.grid),
                        generator=torch.Generator().manual_seed(4242))

    @torch.inference_mode()
    def evaluate(m, steps: int) -> dict[str, float]:
        images = []
        for b in range(0, n_eval, 100):
            caps = eval_caps[b:b + 100]
            final = euler(lambda x, sigma, caps=caps: transformer_velocity(m, x, sigma, caps),
                          noise[b:b + 100], shifted_sigmas(steps)).final
            images.append(ae.decode(final))
        imgs = torch.cat(images)
        result = named_attribute_accuracy(prompts, net.predict(imgs))
        result["palette_purity"] = round(palette_purity((imgs + 1) / 2).mean().item(), 4)
        return result

    curve: list[dict[str, object]] = []

    def checkpoint(step: int, ema) -> None:
        curve.append({"step": step, "accuracy_8_step": evaluate(ema.eval(), 8)})
        log(f"step {step}: {curve[-1]['accuracy_8_step']}")

    ema, info = train_flow_matching(model, latents, cap_ids, caps, cfg, log,
                                    start=start, checkpoint=checkpoint,
                                    checkpoint_every=args.eval_every)
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    report = {"args": arguments, **ae_info, "teacher": info, "curve": curve,
              "final_8_step": evaluate(ema, 8), "final_2_step": evaluate(ema, 2)}
    log(f"final: 8 steps {report['final_8_step']}, 2 steps {report['final_2_step']}")
    out = args.out or RESULTS / f"toy_latent_teacher_probe_{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
