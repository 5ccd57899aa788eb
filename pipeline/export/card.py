"""The model card (``README.md``) of an exported pipeline: how to load and call it, how it
scored against its teacher, where it came from."""

from __future__ import annotations

import json
from typing import Any

from pipeline.evaluation.report import latency_table, metrics_table
from schemas.manifest import EvalReportManifest


def model_card(info: dict[str, Any], evaluation: EvalReportManifest,
               config: dict[str, Any]) -> str:
    """Markdown for ``README.md``. ``info`` is the export's ``twostep.json`` (its ``stages``:
    each stage's key); ``config`` the sections the export was made with."""
    teacher = info["teacher"]
    size = f"{info['height']}x{info['width']}"
    toy = teacher["kind"] == "toy"
    load_note = ("The toy world's decoder class comes from the twostep package, so "
                 "`pip install twostep` (this repository) first." if toy else
                 "Only diffusers, transformers and torch are needed.")
    steps = ", ".join(f"{s:g}" for s in info["sigmas"])
    lines = [
        "---", "library_name: diffusers", "pipeline_tag: text-to-image",
        "tags: [twostep, distillation, few-step, z-image]", "---", "",
        f"# A 2-step text-to-image model distilled from `{teacher['teacher_id']}`", "",
        f"Distilled by twostep from the {teacher['steps']}-step teacher "
        f"`{teacher['teacher_id']}` ({teacher['kind']}) into two steps on the schedule "
        f"`{steps}` ({info['parameterization']} parameterization: "
        + ({"decoupled": "step 1 runs `transformer`, step 2 `transformer_2`",
            "decoupled_lora": "its two LoRA adapters are fused: step 1 runs `transformer`, "
                              "step 2 `transformer_2`"}.get(info["parameterization"],
                                                            "one `transformer` runs both steps"))
        + f"). Images are {size}; weights are {info['dtype']} safetensors.", "",
        "## Use", "", load_note, "", "```python", "import torch",
        "from diffusers import DiffusionPipeline", "",
        'pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER", trust_remote_code=True'
        + ("" if info["dtype"] == "float32" else f", dtype=torch.{info['dtype']}") + ")",
        f'image = pipe("{info["example_prompt"]}", num_inference_steps=2, '
        "generator=torch.Generator().manual_seed(0)).images[0]",
        'image.save("out.png")', "```", "",
        "Two steps, no guidance (it is distilled into the weights: `guidance_scale` must stay "
        "0). `generator` may be a list, one per image; image `i` of "
        "`distill generate --model THIS_FOLDER --seed S` uses `torch.Generator()"
        ".manual_seed(S + i)`.", "",
        "## Evaluation", "",
        f"{evaluation.num_samples} held-out samples ({evaluation.num_prompts} prompts), the "
        f"same noise for every generator (evaluate `{evaluation.key}`, on "
        f"{evaluation.device}); `teacher_{teacher['steps']}` is the teacher, `teacher_2` the "
        "teacher run naively with 2 steps, `student` this model.", "",
        *metrics_table(evaluation.generators), "",
        "Latency per image (seconds):", "", *latency_table(evaluation.generators), "",
        "One row per prompt; columns in the order of the table above:", "",
        "![samples](grid.png)", "",
        "## Lineage", "",
        f"- code: `{info['code_version']}`",
        f"- diffusers: `{info['diffusers']}` (or newer: `ZImagePipeline` is needed)",
        *[f"- {stage}: `{key}`" for stage, key in info["stages"].items()],
        f"- teacher: `{teacher['teacher_id']}` (kind {teacher['kind']}, path "
        f"`{teacher['path'] or 'shipped toy teacher'}`)", "",
        "<details><summary>Run configuration</summary>", "", "```json",
        json.dumps(config, indent=2, sort_keys=True), "```", "</details>", "",
    ]
    return "\n".join(lines)
