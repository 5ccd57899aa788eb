"""Quality of the shipped toy teacher: 8 steps vs naive 2 steps vs ground-truth renders.

For 500 fresh toy prompts (seed 4242; fully and partly specified), with the same noise for
both step counts: per-attribute accuracy by the toy feature network over the prompts that name
the attribute, palette purity (fraction of pixels on a pure toy colour) and the valid rate
(purity >= 0.9). Writes ``research/results/toy_teacher.json`` and contact sheets of the first
32 prompts to ``docs/images/`` (~1 min on 2 CPUs).

    .venv/bin/python research/toy_teacher_quality.py [--teacher-path DIR] [--guidance W ...]
        [--prompts N] [--out FILE] [--images DIR]
    .venv/bin/python research/toy_teacher_quality.py --prompts 16 --out /tmp/q.json \\
        --images /tmp/q                       # ~20 s: checks that it runs

Optionally (``--guidance W ...``) diagnostic rows with classifier-free guidance at sampling
time (the all-unnamed prompt "a shape" as the unconditional branch); the shipped teacher has
guidance 2 distilled into it and is sampled without, so such rows guide it a second time. For a
latent teacher, also the ground-truth renders passed through its autoencoder (the ceiling its
decoder sets).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.flow import euler
from pipeline.generate import contact_sheet, noise_for_seeds, to_uint8
from pipeline.teachers import load_teacher
from pipeline.toy.features import HEADS, load_feature_net, to_tensor
from pipeline.toy.metrics import named_attribute_accuracy, palette_purity
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.render import render_prompt_seed
from pipeline.toy.teacher import NULL_PROMPT

ROOT = Path(__file__).resolve().parent.parent


def score(images: torch.Tensor, prompts, net) -> dict[str, float]:
    result: dict[str, float] = named_attribute_accuracy(prompts, net.predict(images * 2 - 1))
    result["mean"] = round(sum(result[n] for n in HEADS) / len(HEADS), 4)
    purity = palette_purity(images)
    result["palette_purity"] = round(purity.mean().item(), 4)
    result["valid_rate"] = round((purity >= 0.9).float().mean().item(), 4)
    return result


@torch.inference_mode()
def _guided_sample(teacher, caps, null, noise, steps: int, weight: float) -> torch.Tensor:
    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v_cond = teacher.velocity(x, sigma, caps)
        v_null = teacher.velocity(x, sigma, [null] * x.shape[0])
        return v_null + weight * (v_cond - v_null)

    return euler(guided, noise, teacher.schedule(steps, tuple(noise.shape[1:]))).final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-path", default=None)
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--guidance", type=float, nargs="*", default=[],
                        help="Diagnostic rows with sampling-time classifier-free guidance at "
                             "these weights (none by default).")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "research" / "results" / "toy_teacher.json")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "images",
                        help="Folder for the contact sheets.")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = load_teacher("toy", args.teacher_path)
    net = load_feature_net()
    prompts = generate_prompts(args.prompts, seed=4242)
    texts = [p.text for p in prompts]
    seeds = list(range(len(prompts)))
    caps = teacher.encode_prompts(texts)
    noise = noise_for_seeds(seeds, teacher.latent_shape(32, 32))
    report: dict[str, object] = {"prompts": len(prompts), "prompt_seed": 4242}
    images = {}
    for steps in (8, 2):
        start = time.perf_counter()
        finals = [teacher.sample(caps[i:i + 100], noise[i:i + 100], steps).final
                  for i in range(0, len(prompts), 100)]
        images[steps] = teacher.decode(torch.cat(finals))
        report[f"teacher_{steps}_step"] = {
            **score(images[steps], prompts, net),
            "seconds": round(time.perf_counter() - start, 2)}
        print(steps, "steps:", report[f"teacher_{steps}_step"], flush=True)
    # Diagnostic (not how the teacher is sampled): sampling-time classifier-free guidance with the
    # all-unnamed prompt "a shape" as the unconditional branch, 8 steps,
    # v = v("a shape") + w (v(prompt) - v("a shape")).
    null = teacher.encode_prompts([NULL_PROMPT])[0]
    for weight in args.guidance:
        start = time.perf_counter()
        guided = torch.cat([_guided_sample(teacher, caps[i:i + 100], null, noise[i:i + 100],
                                           8, weight)
                            for i in range(0, len(prompts), 100)])
        key = f"teacher_8_step_cfg_{weight:g}"
        report[key] = {**score(teacher.decode(guided), prompts, net),
                       "seconds": round(time.perf_counter() - start, 2)}
        print(key, report[key], flush=True)
    truth = torch.stack([to_tensor(render_prompt_seed(p.attributes, s)[0][None])[0]
                         for p, s in zip(prompts, seeds, strict=True)])
    report["ground_truth"] = score((truth + 1) / 2, prompts, net)
    print("ground truth:", report["ground_truth"])
    if teacher.latent_shape(32, 32) != (3, 32, 32):
        with torch.inference_mode():
            decoded = teacher.decode(teacher.encode_images((truth + 1) / 2))
        report["ground_truth_through_autoencoder"] = score(decoded, prompts, net)
        print("through the autoencoder:", report["ground_truth_through_autoencoder"])
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    pictures = args.images
    pictures.mkdir(parents=True, exist_ok=True)
    for steps in (8, 2):
        contact_sheet(to_uint8(images[steps][:32]), columns=8, scale=3).save(
            pictures / f"toy-teacher-{steps}step.png")
    (pictures / "toy-teacher-prompts.txt").write_text("\n".join(texts[:32]) + "\n")
    print("wrote", out, "and", pictures)


if __name__ == "__main__":
    main()
