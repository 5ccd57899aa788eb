"""Can the phase-2 discriminator tell a trained student's samples from the teacher's at all?

In `make demo`'s phase 2 the discriminator loss sits at 2 ln 2 = 1.386 for all 300 steps
(issue 21). This probe separates "the discriminator cannot discriminate" from "the GAN game
keeps it at chance": it freezes a finished student, samples it once on train and held-out
eval prompts (the teacher samples' noise), and trains only the discriminator's heads against
those fixed fakes for a few hundred steps per setting, exactly as phase 2 builds and
optimizes them (:class:`pipeline.student.discriminator.Discriminator`, AdamW, batch 32 real +
32 fake, the same re-noising). Held-out balanced accuracy is measured on fixed draws over
each setting's re-noising range and at sigma_min alone.

    .venv/bin/python research/toy_discriminator_probe.py --workspace runs/toy \\
        --stage train_e2e/60359ab8f491917f --out research/results/toy_discriminator_probe.json

The settings marked "re-encoded" give the heads both sides decoded to images and encoded
again (what of a latent the image shows); ``--naive-steps 2`` takes the teacher's own 2-step
samples as the fakes instead of a student's (a generator with a gap to find).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from itertools import islice
from pathlib import Path

import torch

SETTINGS: dict[str, dict] = {
    "demo (lr 2e-4, sigma 0.05-0.7)": {},
    "lr 1e-3": {"lr": 1e-3},
    "sigma 0.0-0.3": {"sigma_min": 0.0, "sigma_max": 0.3},
    "lr 1e-3, sigma 0.0-0.3": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.3},
    "lr 1e-3, sigma 0.0-0.3, layers 0-3": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.3,
                                           "layers": [0, 1, 2, 3]},
    "lr 1e-3, sigma 0.0-0.3, hidden 256": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.3,
                                           "hidden": 256},
    "lr 1e-3, sigma 0.0-0.1": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.1},
    "lr 1e-3, sigma 0.0-0.1, layers 0-3": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.1,
                                           "layers": [0, 1, 2, 3]},
    # 2026-12-07: is what the low-noise heads see visible in the image at all? Both sides
    # decoded to pixels and encoded again (what of a latent survives the autoencoder's round
    # trip; not a projection: the teacher's own latents move by mse 0.06), then the same heads
    "lr 1e-3, sigma 0.0-0.3, re-encoded": {"lr": 1e-3, "sigma_min": 0.0, "sigma_max": 0.3,
                                           "reencode": True},
    "demo (lr 2e-4, sigma 0.05-0.7), re-encoded": {"reencode": True},
}


@torch.no_grad()
def _reencoded(teacher, x0: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``x0`` latents decoded to images and encoded again (the autoencoder's round trip)."""
    return torch.cat([teacher.encode_images(teacher.decode(x0[at:at + chunk])).cpu()
                      for at in range(0, x0.shape[0], chunk)])


def _samples(store, manifest, split: str, n: int):
    from pipeline.samples.reader import TeacherSampleReader, collate_samples

    reader = TeacherSampleReader.from_manifest(store, manifest, split)
    return collate_samples(list(islice(iter(reader), n)))


@torch.no_grad()
def _fakes(sample, batch, chunk: int = 128) -> torch.Tensor:
    """``sample(noise, captions)`` -> x0, over ``batch`` in chunks."""
    out = []
    for at in range(0, batch["noise"].shape[0], chunk):
        out.append(sample(batch["noise"][at:at + chunk], batch["caption"][at:at + chunk]))
    return torch.cat(out)


@torch.no_grad()
def _accuracy(disc, real, fake, caps, sigma, noise) -> float:
    from pipeline.student.losses import discriminator_accuracy

    logits = []
    for at in range(0, real.shape[0], 128):
        s = slice(at, at + 128)
        n = real[s].shape[0]
        logits.append(disc(torch.cat([real[s], fake[s]]), caps[s] + caps[s],
                           torch.cat([sigma[s], sigma[s]]), torch.cat([noise[s], noise[s]]))
                      .split(n))
    real_l = torch.cat([r for r, _ in logits])
    fake_l = torch.cat([f for _, f in logits])
    return discriminator_accuracy(real_l, fake_l)


def probe(backbone, train, train_fake, held, held_fake, setting: dict, steps: int,
          every: int) -> dict:
    from pipeline.student.discriminator import Discriminator
    from pipeline.student.losses import discriminator_adversarial

    torch.manual_seed(0)
    layers, hidden = setting.get("layers", [1, 3]), setting.get("hidden", 128)
    # "reencode" picks the inputs (main); the heads and their training are the same
    lo, hi = setting.get("sigma_min", 0.05), setting.get("sigma_max", 0.7)
    disc = Discriminator(backbone, layers, hidden)
    opt = torch.optim.AdamW(disc.parameters(), lr=setting.get("lr", 2e-4), betas=(0.0, 0.99),
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    n_held = held["x0"].shape[0]
    held_sigma = lo + (hi - lo) * torch.rand(n_held, generator=gen)
    held_noise = torch.randn(held["x0"].shape, generator=gen)
    low_sigma = torch.full((n_held,), lo)
    curve, n_train, start = [], train["x0"].shape[0], time.perf_counter()

    def measure(step: int) -> None:
        curve.append({"step": step,
                      "heldout_accuracy": _accuracy(disc, held["x0"], held_fake,
                                                    held["caption"], held_sigma, held_noise),
                      "heldout_accuracy_at_sigma_min": _accuracy(
                          disc, held["x0"], held_fake, held["caption"], low_sigma,
                          held_noise)})

    measure(0)
    losses = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, n_train, (32,), generator=gen)
        sigma = lo + (hi - lo) * torch.rand(32, generator=gen)
        noise = torch.randn((32, *train["x0"].shape[1:]), generator=gen)
        caps = [train["caption"][i] for i in idx]
        logits = disc(torch.cat([train["x0"][idx], train_fake[idx]]), caps + caps,
                      torch.cat([sigma, sigma]), torch.cat([noise, noise]))
        real_l, fake_l = logits.chunk(2)
        loss = discriminator_adversarial(real_l, fake_l, "non_saturating")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % every == 0:
            measure(step)
            curve[-1]["train_loss_d"] = sum(losses[-every:]) / every
    return {"setting": setting, "curve": curve, "seconds": round(time.perf_counter() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="runs/toy")
    parser.add_argument("--stage", help="train_e2e/<key> (or train_init/<key>): the student "
                        "whose samples are the fakes")
    parser.add_argument("--naive-steps", type=int, help="Instead of a student, the teacher's "
                        "own samples in this many steps are the fakes (2: the naive 2-step "
                        "teacher): how the heads fare when there is a gap to find")
    parser.add_argument("--train-samples", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--only", nargs="*", help="Settings by name (default: all).")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pipeline.store import ArtifactStore
    from pipeline.student.discriminator import frozen_copy
    from pipeline.student.load import load_student
    from pipeline.teachers import load_teacher
    from schemas.manifest import StudentCheckpointManifest, TeacherSamplesManifest

    if (args.stage is None) == (args.naive_steps is None):
        parser.error("give --stage or --naive-steps")
    torch.set_num_threads(2)
    store = ArtifactStore(args.workspace)
    teacher = load_teacher("toy")
    if args.stage:
        manifest = store.read_manifest(args.stage, StudentCheckpointManifest)
        sample = load_student(store.local_path(args.stage), manifest, teacher, "ema").sample
        # the teacher samples the student was trained on, not whichever were made last
        samples_key = next(i.key for i in manifest.inputs if i.stage == "sample_teacher")
    else:
        samples_key = json.loads(
            (Path(args.workspace) / "sample_teacher" / "latest.json").read_text())["key"]

        def sample(noise, captions):
            return teacher.sample(captions, noise, args.naive_steps).final
    samples = store.read_manifest(f"sample_teacher/{samples_key}", TeacherSamplesManifest)
    backbone = frozen_copy(copy.deepcopy(teacher.transformer))
    train = _samples(store, samples, "train", args.train_samples)
    held = _samples(store, samples, "eval", 10**9)
    train_fake, held_fake = _fakes(sample, train), _fakes(sample, held)
    gap = (held_fake - held["x0"]).pow(2).mean().item()
    source = args.stage or f"teacher at {args.naive_steps} steps"
    print(f"fakes {source}: held-out mse to the teacher {gap:.4g}; "
          f"{train['x0'].shape[0]} train / {held['x0'].shape[0]} held-out pairs", flush=True)
    report = {"stage": source, "heldout_mse_to_teacher": gap, "settings": {}}
    pixel_gap = (teacher.decode(held_fake) - teacher.decode(held["x0"])).pow(2).mean().item()
    report["heldout_pixel_mse_to_teacher"] = pixel_gap
    inputs = {False: (train, train_fake, held, held_fake)}
    chosen = {n: s for n, s in SETTINGS.items() if not args.only or n in args.only}
    if any(s.get("reencode") for s in chosen.values()):
        inputs[True] = ({**train, "x0": _reencoded(teacher, train["x0"])},
                        _reencoded(teacher, train_fake),
                        {**held, "x0": _reencoded(teacher, held["x0"])},
                        _reencoded(teacher, held_fake))
        round_trip = (inputs[True][3] - inputs[True][2]["x0"]).pow(2).mean().item()
        report["heldout_reencoded_mse_to_teacher"] = round_trip
        report["teacher_round_trip_mse"] = (inputs[True][2]["x0"] - held["x0"]).pow(2).mean().item()
    print(f"pixel mse {pixel_gap:.4g}; re-encoded latent mse "
          f"{report.get('heldout_reencoded_mse_to_teacher', float('nan')):.4g}; the teacher's "
          f"own round trip {report.get('teacher_round_trip_mse', float('nan')):.4g}", flush=True)
    for name, setting in chosen.items():
        result = probe(backbone, *inputs[bool(setting.get("reencode"))], setting, args.steps,
                       args.every)
        report["settings"][name] = result
        last = result["curve"]
        print(f"{name}: held-out accuracy " + ", ".join(
            f"{c['step']}: {c['heldout_accuracy']:.3f}/{c['heldout_accuracy_at_sigma_min']:.3f}"
            for c in last) + f" ({result['seconds']} s)", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
