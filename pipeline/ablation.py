"""The ablation of the paper's three claims: variants, and the table that judges each claim
from the evaluation metrics of the full method and its variants (all from the same teacher
shards, evaluated on the same eval samples and noise)."""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "shared": ["train_init.parameterization=shared"],
    "gan_real_data": ["train_e2e.gan_real=data"],
    "no_end_to_end": ["train_e2e.end_to_end=false"],
    "no_step1_reg": ["train_e2e.step1_weight=0"],
    # Not a claim of the paper: the memory-saving parameterization of the real-scale path
    # (one frozen base, a LoRA adapter per step), at the 10x learning rate adapters usually
    # take (docs/training.md).
    "decoupled_lora": ["train_init.parameterization=decoupled_lora", "train_init.lora.rank=32",
                       "train_init.lora.alpha=32", "train_init.optimizer.lr=2e-3",
                       "train_e2e.optimizer.lr=2e-4"],
}
"""Variant name -> config overrides on top of the run's own."""


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    variant: str  # the ablated variant compared with "full"


CLAIMS = (
    Claim("distribution-aligned adversarial learning",
          "teacher images as the discriminator's real samples beat the data set",
          "gan_real_data"),
    Claim("step-decoupled parameterization",
          "two step models beat one shared model", "shared"),
    Claim("end-to-end training", "gradients from the final image into step 1 help",
          "no_end_to_end"),
    Claim("iterative regularization", "the step-1 loss helps end-to-end training",
          "no_step1_reg"),
)

PRIMARY = "fd_teacher"
TOLERANCE = 0.05
"""A relative difference below 5% of the primary metric is called inconclusive."""


def verdict(full: dict[str, float], ablated: dict[str, float]) -> tuple[str, float]:
    """('holds' | 'does not hold' | 'inconclusive', relative change of the primary metric,
    ablated vs full: positive means the ablation is worse, i.e. the claim holds)."""
    a, b = full[PRIMARY], ablated[PRIMARY]
    change = (b - a) / max(abs(a), 1e-12)
    if abs(change) < TOLERANCE:
        return "inconclusive", change
    return ("holds" if change > 0 else "does not hold"), change


def ablation_markdown(results: dict[str, dict[str, float]]) -> str:
    """The variants' metrics and one line per claim (student at 2 steps for each variant)."""
    keys = [PRIMARY, "fd_data", "mean_accuracy", "valid_rate", "psnr", "ssim", "diversity"]
    lines = ["| variant | overrides | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, metrics in results.items():
        cells = [f"{metrics[k]:.4g}" if k in metrics else "-" for k in keys]
        overrides = ", ".join(VARIANTS.get(name, [])) or "(the method)"
        lines.append(f"| {name} | {overrides} | " + " | ".join(cells) + " |")
    lines += ["", "| claim | statement | ablation | verdict | FD to teacher, full -> ablated |",
              "|---|---|---|---|---|"]
    for claim in CLAIMS:
        if claim.variant not in results or "full" not in results:
            continue
        word, change = verdict(results["full"], results[claim.variant])
        lines.append(f"| {claim.name} | {claim.statement} | {claim.variant} | **{word}** | "
                     f"{results['full'][PRIMARY]:.4g} -> {results[claim.variant][PRIMARY]:.4g} "
                     f"({change:+.1%}) |")
    return "\n".join(lines) + "\n"


def student_metrics(store, evaluate_dir: str) -> dict[str, float]:
    """The 2-step student's metrics from a finished ``evaluate`` stage folder."""
    from schemas.manifest import EvalReportManifest

    manifest = store.read_manifest(evaluate_dir, EvalReportManifest)
    (student,) = [g for g in manifest.generators if g.name == "student"]
    return dict(student.metrics)


def write_ablation(store, results: dict[str, dict[str, float]],
                   sources: dict[str, str]) -> str:
    """``<workspace>/ablation/ablation.md`` and ``ablation.json``; returns the Markdown."""
    import json

    text = ("# Ablation of the paper's claims (toy world)\n\n"
            f"Student at 2 steps, per variant; verdicts on `{PRIMARY}` (lower is better; "
            f"changes under {TOLERANCE:.0%} are called inconclusive).\n\n"
            + ablation_markdown(results) + "\nEvaluations:\n\n"
            + "".join(f"- {name}: {uri}\n" for name, uri in sources.items()))
    store.write_bytes(text.encode(), "ablation", "ablation.md")
    store.write_bytes(json.dumps({"results": results, "evaluations": sources},
                                 indent=2).encode(), "ablation", "ablation.json")
    return text
