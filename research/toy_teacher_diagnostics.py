"""Where the toy teacher loses shape: the measurements behind docs/toy-world.md (pixel or
latent teacher; predictions are compared and scored as decoded images).

1. Step count: attribute accuracy of 8, 32 and 100 Euler steps (same prompts and noise).
2. Caption reach: at sigma 0.98, the mean |difference| between the teacher's x0 predictions for
   `circle`, `square` and `triangle` prompts (same noise), next to the renders' difference.
3. Denoising from true renders: one Euler step to x0 from renders noised to sigma, with their
   prompts; the feature network's shape (and other) accuracy on the prediction, per sigma.
4. Word sensitivity: 8-step samples (same 60 noises) of `a large red {circle|square|triangle|
   shape} in the center on a black background` and of a blue circle: the shapes the feature
   network reads per word, and the mean |difference| between the images per word swap. A
   teacher that ignores the shape word draws the same image for every shape word.
5. Caption swap: the flow-matching loss on true renders (200 prompts naming shape and colour)
   per sigma with the true prompt, with its shape word swapped, and with its colour word
   swapped. The rise over the true prompt is how much the teacher relies on that word.

    .venv/bin/python research/toy_teacher_diagnostics.py [--teacher-path DIR] [--prompts N]
        [--out FILE]                                   # ~3 min on 2 CPUs at the defaults
    .venv/bin/python research/toy_teacher_diagnostics.py --prompts 8 --swap-prompts 8 \\
        --noises 4 --out /tmp/d.json                   # ~1 min: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.flow import noised
from pipeline.teachers import load_teacher
from pipeline.toy.features import load_feature_net, to_tensor
from pipeline.toy.metrics import named_attribute_accuracy
from pipeline.toy.prompts import COLORS, SHAPES, generate_prompts
from pipeline.toy.render import Scene, render, sample_scene

ROOT = Path(__file__).resolve().parent.parent
SIGMAS = (0.3, 0.5, 0.64, 0.75, 0.83, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-path", default=None)
    parser.add_argument("--prompts", type=int, default=300,
                        help="Prompts of measurements 1 and 3.")
    parser.add_argument("--swap-prompts", type=int, default=200,
                        help="Prompts of the caption-swap loss (5).")
    parser.add_argument("--noises", type=int, default=60,
                        help="Noises per word of the word sensitivity (4).")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "research" / "results" / "toy_teacher_diagnostics.json")
    args = parser.parse_args()
    teacher = load_teacher("toy", args.teacher_path)
    net = load_feature_net()
    report: dict[str, object] = {"prompts": args.prompts}

    prompts = generate_prompts(args.prompts, seed=4242)
    caps = teacher.encode_prompts([p.text for p in prompts])
    shape = teacher.latent_shape(32, 32)  # (8, 8, 8) shipped, (3, 32, 32) a pixel teacher
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(4242))
    steps_report = {}
    for steps in (8, 32, 100):
        finals = torch.cat([teacher.sample(caps[i:i + 100], noise[i:i + 100], steps).final
                            for i in range(0, len(prompts), 100)])
        images = teacher.decode(finals) * 2 - 1
        steps_report[steps] = named_attribute_accuracy(prompts, net.predict(images))
        print(f"{steps} steps: {steps_report[steps]}", flush=True)
    report["steps"] = steps_report

    template = "a large red {} in the center on a black background"
    shapes = ("circle", "square", "triangle")
    n = 16
    x0 = encode(teacher, to_tensor(render(Scene("large", "red", "circle", 4, "black"))[None]))
    eps = torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))
    sigma = 0.98
    xt = noised(x0, eps, torch.full((n,), sigma))
    preds = {}
    for word in shapes:
        v = teacher.velocity(xt, torch.full((n,), sigma),
                             teacher.encode_prompts([template.format(word)] * n))
        preds[word] = teacher.decode(xt - sigma * v) * 2 - 1  # compared as images
    renders = {s: to_tensor(render(Scene("large", "red", s, 4, "black"))[None]) for s in shapes}
    report["caption_reach_sigma_0.98"] = {
        f"{a}-{b}": {"prediction": round(float((preds[a] - preds[b]).abs().mean()), 4),
                     "renders": round(float((renders[a] - renders[b]).abs().mean()), 4)}
        for a, b in (("circle", "square"), ("circle", "triangle"))}
    print("caption reach:", report["caption_reach_sigma_0.98"], flush=True)

    rng = random.Random(0)
    truth = to_tensor(torch.stack([torch.from_numpy(render(sample_scene(p.attributes,
                                                                        rng.getrandbits(63))))
                                   for p in prompts]).numpy())
    truth = encode(teacher, truth)
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    denoise = {}
    for sigma in SIGMAS:
        xt = noised(truth, eps, torch.full((len(truth),), sigma))
        v = torch.cat([teacher.velocity(xt[i:i + 100], torch.full((len(xt[i:i + 100]),), sigma),
                                        caps[i:i + 100]) for i in range(0, len(prompts), 100)])
        predicted = teacher.decode(xt - sigma * v) * 2 - 1
        denoise[sigma] = named_attribute_accuracy(prompts, net.predict(predicted))
        print(f"one step from sigma {sigma}: {denoise[sigma]}", flush=True)
    report["one_step_from_true_renders"] = denoise
    report["word_sensitivity"] = word_sensitivity(teacher, net, args.noises)
    print("word sensitivity:", report["word_sensitivity"], flush=True)
    report["caption_swap_loss"] = caption_swap_loss(teacher, args.swap_prompts)
    print("caption swap loss:", report["caption_swap_loss"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


def encode(teacher, images: torch.Tensor) -> torch.Tensor:
    """Renders in [-1, 1] -> the teacher's space."""
    return teacher.encode_images((images + 1) / 2)


def caption_swap_loss(teacher, n: int = 200) -> dict[str, dict[str, float]]:
    """Mean squared velocity error on noised true renders, per sigma and caption variant."""
    rng = random.Random(0)
    prompts = [p for p in generate_prompts(20 * n, seed=99)
               if p.attributes.shape and p.attributes.color][:n]
    truth = to_tensor(np.stack([render(sample_scene(p.attributes, rng.getrandbits(63)))
                                for p in prompts]))
    x0 = teacher.encode_images((truth + 1) / 2)

    def swapped(text: str, words, current: str) -> str:
        return text.replace(current, rng.choice([w for w in words if w != current]))

    texts = {"true": [p.text for p in prompts],
             "shape swapped": [swapped(p.text, SHAPES, p.attributes.shape) for p in prompts],
             "colour swapped": [swapped(p.text, tuple(COLORS), p.attributes.color)
                                for p in prompts]}
    caps = {k: teacher.encode_prompts(v) for k, v in texts.items()}
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    result = {}
    for sigma in SIGMAS:
        xt = noised(x0, eps, torch.full((len(x0),), sigma))
        result[str(sigma)] = {
            k: round(float(torch.cat([
                teacher.velocity(xt[i:i + 100], torch.full((len(xt[i:i + 100]),), sigma),
                                 c[i:i + 100]) for i in range(0, n, 100)]).sub(eps - x0)
                .pow(2).mean()), 5)
            for k, c in caps.items()}
    return result


def word_sensitivity(teacher, net, n: int = 60) -> dict[str, object]:
    """Shapes read off 8-step samples per shape word, and image differences per word swap."""
    noise = torch.randn((n, *teacher.latent_shape(32, 32)),
                        generator=torch.Generator().manual_seed(1))
    texts = {word: f"a large red {word} in the center on a black background"
             for word in ("circle", "square", "triangle", "shape")}
    texts["blue circle"] = "a large blue circle in the center on a black background"
    images = {}
    for word, text in texts.items():
        final = teacher.sample(teacher.encode_prompts([text] * n), noise, 8).final
        images[word] = teacher.decode(final) * 2 - 1
    read = {word: {s: sum(p.shape == s for p in net.predict(images[word]))
                   for s in ("circle", "square", "triangle")} for word in texts}
    swaps = (("circle", "square"), ("circle", "triangle"), ("circle", "shape"),
             ("circle", "blue circle"))
    return {"samples": n, "shapes_read": read,
            "mean_abs_difference": {f"{a} -> {b}": round(float((images[a] - images[b]).abs()
                                                                 .mean()), 4)
                                    for a, b in swaps}}


if __name__ == "__main__":
    with torch.inference_mode():
        main()
