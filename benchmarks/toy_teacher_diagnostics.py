"""Where the toy teacher loses shape: three measurements behind docs/toy-world.md.

1. Step count: attribute accuracy of 8, 32 and 100 Euler steps (same prompts and noise).
2. Caption reach: at sigma 0.98, the mean |difference| between the teacher's x0 predictions for
   `circle`, `square` and `triangle` prompts (same noise), next to the renders' difference.
3. Denoising from true renders: one Euler step to x0 from renders noised to sigma, with their
   prompts; the feature network's shape (and other) accuracy on the prediction, per sigma.

    .venv/bin/python benchmarks/toy_teacher_diagnostics.py [--teacher-path DIR] [--prompts N]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from pipeline.teachers import load_teacher
from pipeline.toy.features import load_feature_net, to_tensor
from pipeline.toy.metrics import named_attribute_accuracy
from pipeline.toy.prompts import generate_prompts
from pipeline.toy.render import Scene, render, sample_scene

ROOT = Path(__file__).resolve().parent.parent
SIGMAS = (0.3, 0.5, 0.64, 0.75, 0.83, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-path", default=None)
    parser.add_argument("--prompts", type=int, default=300)
    args = parser.parse_args()
    teacher = load_teacher("toy", args.teacher_path)
    net = load_feature_net()
    report: dict[str, object] = {"prompts": args.prompts}

    prompts = generate_prompts(args.prompts, seed=4242)
    caps = teacher.encode_prompts([p.text for p in prompts])
    noise = torch.randn((len(prompts), 3, 32, 32), generator=torch.Generator().manual_seed(4242))
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
    x0 = to_tensor(render(Scene("large", "red", "circle", 4, "black"))[None])
    eps = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    sigma = 0.98
    xt = (1 - sigma) * x0 + sigma * eps
    preds = {}
    for shape in shapes:
        v = teacher.velocity(xt, torch.full((n,), sigma),
                             teacher.encode_prompts([template.format(shape)] * n))
        preds[shape] = xt - sigma * v
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
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    denoise = {}
    for sigma in SIGMAS:
        xt = (1 - sigma) * truth + sigma * eps
        v = torch.cat([teacher.velocity(xt[i:i + 100], torch.full((len(xt[i:i + 100]),), sigma),
                                        caps[i:i + 100]) for i in range(0, len(prompts), 100)])
        predicted = (xt - sigma * v).clamp(-1, 1)
        denoise[sigma] = named_attribute_accuracy(prompts, net.predict(predicted))
        print(f"one step from sigma {sigma}: {denoise[sigma]}", flush=True)
    report["one_step_from_true_renders"] = denoise
    out = ROOT / "benchmarks" / "results" / "toy_teacher_diagnostics.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
