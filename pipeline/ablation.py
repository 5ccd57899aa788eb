"""The ablation of the paper's three claims: variants, and the table that judges each claim
from the evaluation metrics of the full method and its variants (all from the same teacher
shards, evaluated on the same eval samples and noise)."""

from __future__ import annotations

import math
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
DISTRIBUTION = "fd_teacher_unpaired"
"""A verdict on the distribution (the teacher's other seeds), not on the sample match from the
same noise that :data:`PRIMARY` rewards."""
SECONDARY = ("psnr", DISTRIBUTION)
"""The further verdicts of each claim, a column each: PSNR to the teacher's image from the same
noise (the sample match image by image, which an FD over the set can miss: on the toy,
end-to-end gradients raise it on every seed at the same paired FD, docs/ablation.md), and the
distribution."""
LOWER_IS_BETTER = {"fd_teacher": True, "fd_teacher_unpaired": True, "fd_data": True,
                   "mean_accuracy": False, "valid_rate": False, "psnr": False, "ssim": False,
                   "diversity": False}
TABLE_METRICS = tuple(LOWER_IS_BETTER)
Z = 2.0
"""A claim holds (or does not) only when the difference of the means exceeds ``Z`` standard
errors of the difference; otherwise it is inconclusive."""


def variant_problem(name: str, problem: Exception) -> str:
    """A variant's config problem (its overrides on top of the run's) as one line naming the
    variant and the way out."""
    if not VARIANTS.get(name):
        return str(problem)
    return (f"ablation variant {name} ({', '.join(VARIANTS[name])}): {problem}; leave the "
            f"variant out by naming the others (--variant, or the flow's variants)")


def seed_overrides(seed: int) -> list[str]:
    """The overrides of training seed ``seed``: initial noise, data order and every draw of
    both phases (the teacher shards, hence curation and sampling, are shared)."""
    return [f"train_init.seed={seed}", f"train_e2e.seed={seed}"]


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (ddof 1; NaN for one value) and count of one metric
    over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n)

    def __str__(self) -> str:
        return f"{self.mean:.4g}" if self.n < 2 else f"{self.mean:.4g} ± {self.std:.2g}"


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict: ``word`` is ``holds``, ``does not hold``, ``inconclusive`` or
    ``untested (1 seed)``; ``change`` is the ablated mean relative to the full method's
    (positive: the ablation is worse, i.e. the claim holds); ``z`` the difference in standard
    errors (NaN with one seed)."""

    word: str
    change: float
    z: float


def verdict(full: list[dict[str, float]], ablated: list[dict[str, float]],
            metric: str = PRIMARY) -> Verdict:
    """Judge a claim on ``metric`` from per-seed results of the full method and the ablated
    variant: the difference of the means against ``Z`` standard errors of the difference
    (Welch: ``sqrt(s_a^2 / n_a + s_b^2 / n_b)``). One seed on either side gives no error
    estimate, so no verdict."""
    a = Spread.of([r[metric] for r in full])
    b = Spread.of([r[metric] for r in ablated])
    worse = (b.mean - a.mean) if LOWER_IS_BETTER.get(metric, True) else (a.mean - b.mean)
    change = worse / max(abs(a.mean), 1e-12)
    if a.n < 2 or b.n < 2:
        return Verdict("untested (1 seed)", change, math.nan)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    z = worse / se if se > 0 else math.copysign(math.inf, worse) if worse else 0.0
    if abs(z) <= Z:
        return Verdict("inconclusive", change, z)
    return Verdict("holds" if z > 0 else "does not hold", change, z)


def ablation_markdown(results: dict[str, list[dict[str, float]]]) -> str:
    """The variants' metrics (mean ± std over seeds) and one line per claim (student at 2
    steps for each variant and seed)."""
    keys = list(TABLE_METRICS)
    lines = ["| variant | overrides | seeds | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, runs in results.items():
        cells = [str(Spread.of([r[k] for r in runs])) if all(k in r for r in runs) else "-"
                 for k in keys]
        overrides = ", ".join(VARIANTS.get(name, [])) or "(the method)"
        lines.append(f"| {name} | {overrides} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", f"| claim | statement | ablation | verdict | {PRIMARY}, full -> ablated | "
              f"difference / its standard error | "
              + " | ".join(f"on {metric}" for metric in SECONDARY) + " |",
              "|---|---|---|---|---|---|" + "---|" * len(SECONDARY)]
    for claim in CLAIMS:
        if claim.variant not in results or "full" not in results:
            continue
        full, ablated = results["full"], results[claim.variant]
        v = verdict(full, ablated)
        spread = [Spread.of([r[PRIMARY] for r in runs]) for runs in (full, ablated)]
        z = "-" if math.isnan(v.z) else f"{v.z:+.1f}"
        further = [_verdict_cell(full, ablated, metric) for metric in SECONDARY]
        lines.append(f"| {claim.name} | {claim.statement} | {claim.variant} | **{v.word}** | "
                     f"{spread[0]} -> {spread[1]} ({v.change:+.1%}) | {z} | "
                     + " | ".join(further) + " |")
    return "\n".join(lines) + "\n"


def _verdict_cell(full: list[dict[str, float]], ablated: list[dict[str, float]],
                  metric: str) -> str:
    """``word (change, z)`` on ``metric``, or ``-`` where a run did not report it."""
    if not all(metric in r for r in full + ablated):
        return "-"
    v = verdict(full, ablated, metric)
    z = "" if math.isnan(v.z) else f", {v.z:+.1f}"
    return f"{v.word} ({v.change:+.1%}{z})"


def student_metrics(store, evaluate_dir: str) -> dict[str, float]:
    """The 2-step student's metrics from a finished ``evaluate`` stage folder."""
    from schemas.manifest import EvalReportManifest

    manifest = store.read_manifest(evaluate_dir, EvalReportManifest)
    (student,) = [g for g in manifest.generators if g.name == "student"]
    return dict(student.metrics)


def write_ablation(store, results: dict[str, list[dict[str, float]]],
                   sources: dict[str, list[str]]) -> str:
    """``<workspace>/ablation/ablation.md`` and ``ablation.json`` (per-seed metrics and the
    evaluations they come from); returns the Markdown."""
    import json

    seeds = sorted({len(runs) for runs in results.values()})
    text = ("# Ablation of the paper's claims (toy world)\n\n"
            f"Student at 2 steps, per variant, {'/'.join(map(str, seeds))} training seed(s) "
            f"each (mean ± sample std); verdicts on `{PRIMARY}` (lower is better): a claim "
            f"holds or does not only when the difference of the means exceeds {Z:g} standard "
            "errors of the difference, else it is inconclusive. The last columns judge the same "
            "way on `psnr` (higher is better: the student's image against the teacher's from "
            f"the same noise, one by one) and on `{DISTRIBUTION}` (against the teacher's other "
            "seeds: the distribution, where `fd_teacher` is the sample match from the same "
            "noise).\n\n"
            + ablation_markdown(results) + "\nEvaluations (one per seed):\n\n"
            + "".join(f"- {name}: {', '.join(uris)}\n" for name, uris in sources.items()))
    store.write_bytes(text.encode(), "ablation", "ablation.md")
    store.write_bytes(json.dumps({"results": results, "evaluations": sources},
                                 indent=2).encode(), "ablation", "ablation.json")
    return text
