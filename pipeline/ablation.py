"""The ablation of the paper's three claims: variants, and the table that judges each claim
from the evaluation metrics of the full method and its variants (all from the same teacher
shards, evaluated on the same eval samples and noise)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.errors import ArtifactError

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

PRIMARY_CHOICES = ("fd_teacher", "fid_teacher", "psnr")
"""The metric a claim's verdict rests on: the first of these that every evaluation reports.
The toy feature network's FD to the teacher; else (a Z-Image teacher) Inception FID where
``evaluate.real_metrics.fid`` is configured; else PSNR, which every evaluation reports."""
DISTRIBUTION = {"fd_teacher": "fd_teacher_unpaired", "fid_teacher": "fid_teacher_unpaired"}
"""The primary metric's unpaired twin: a verdict on the distribution (the teacher's other
seeds), not on the sample match from the same noise that the primary rewards."""
LOWER_IS_BETTER = {"fd_teacher": True, "fd_teacher_inf": True, "fd_teacher_unpaired": True,
                   "fd_data": True, "fid_teacher": True, "fid_teacher_unpaired": True,
                   "kid_teacher": True, "fid_data": True, "kid_data": True,
                   "mean_accuracy": False, "valid_rate": False, "psnr": False, "ssim": False,
                   "diversity": False, "clip_score": False}
METRIC_MEANING = {
    "psnr": ": the student's image against the teacher's from the same noise, one by one",
    **{twin: f": against the teacher's other seeds, the distribution, where `{paired}` is the "
       "sample match from the same noise" for paired, twin in DISTRIBUTION.items()}}
"""What ablation.md says a judged metric measures, where it needs saying."""
TABLE_METRICS = tuple(LOWER_IS_BETTER)
"""The table's columns, in this order, where any run reports them."""
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


def judged_metrics(results: dict[str, list[dict[str, float]]]) -> tuple[str, tuple[str, ...]]:
    """The primary metric (:data:`PRIMARY_CHOICES`) and the further verdicts' metrics: PSNR
    to the teacher's image from the same noise (the sample match image by image, which an FD
    over the set can miss: on the toy, end-to-end gradients raise it on every seed at the same
    paired FD, docs/ablation.md) and the primary's :data:`DISTRIBUTION` twin."""
    runs = [r for rs in results.values() for r in rs]
    primary = next((m for m in PRIMARY_CHOICES if runs and all(m in r for r in runs)), None)
    if primary is None:
        raise ArtifactError(f"the ablation's evaluations report none of "
                            f"{', '.join(PRIMARY_CHOICES)} in every run (evaluate always "
                            f"reports psnr: are these manifests from another tool?)")
    further = ("psnr", DISTRIBUTION.get(primary))
    return primary, tuple(m for m in further if m and m != primary)


def verdict(full: list[dict[str, float]], ablated: list[dict[str, float]],
            metric: str) -> Verdict:
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


def ablation_markdown(results: dict[str, list[dict[str, float]]],
                      judged: tuple[str, tuple[str, ...]] | None = None) -> str:
    """The variants' metrics (mean ± std over seeds) and one line per claim (student at 2
    steps for each variant and seed), judged on ``judged`` (default: :func:`judged_metrics`)."""
    primary, further = judged or judged_metrics(results)
    keys = [k for k in TABLE_METRICS if any(k in r for runs in results.values() for r in runs)]
    lines = ["| variant | overrides | seeds | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, runs in results.items():
        cells = [str(Spread.of([r[k] for r in runs])) if all(k in r for r in runs) else "-"
                 for k in keys]
        overrides = ", ".join(VARIANTS.get(name, [])) or "(the method)"
        lines.append(f"| {name} | {overrides} | {len(runs)} | " + " | ".join(cells) + " |")
    head = ["claim", "statement", "ablation", "verdict", f"{primary}, full -> ablated",
            "difference / its standard error", *(f"on {metric}" for metric in further)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim in CLAIMS:
        if claim.variant not in results or "full" not in results:
            continue
        full, ablated = results["full"], results[claim.variant]
        v = verdict(full, ablated, primary)
        spread = [Spread.of([r[primary] for r in runs]) for runs in (full, ablated)]
        z = "-" if math.isnan(v.z) else f"{v.z:+.1f}"
        cells = "".join(f" {_verdict_cell(full, ablated, metric)} |" for metric in further)
        lines.append(f"| {claim.name} | {claim.statement} | {claim.variant} | **{v.word}** | "
                     f"{spread[0]} -> {spread[1]} ({v.change:+.1%}) | {z} |" + cells)
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
                   sources: dict[str, list[str]], left_out: dict[str, str] | None = None) -> str:
    """``<workspace>/ablation/ablation.md`` and ``ablation.json`` (per-seed metrics and the
    evaluations they come from; ``left_out``: variants this run's teacher does not support,
    with the reason); returns the Markdown."""
    import json

    seeds = sorted({len(runs) for runs in results.values()})
    primary, further = judged_metrics(results)

    def judged(metric: str) -> str:
        better = "lower" if LOWER_IS_BETTER.get(metric, True) else "higher"
        return f"`{metric}` ({better} is better{METRIC_MEANING.get(metric, '')})"

    preamble = [f"Student at 2 steps, per variant, {'/'.join(map(str, seeds))} training "
                f"seed(s) each (mean ± sample std); verdicts on {judged(primary)}: a claim "
                f"holds or does not only when the difference of the means exceeds {Z:g} "
                "standard errors of the difference, else it is inconclusive."]
    if further:
        preamble.append("The last columns judge the same way on "
                        + " and on ".join(judged(m) for m in further) + ".")
    preamble += [f"Left out: {name} ({why})." for name, why in (left_out or {}).items()]
    text = ("# Ablation of the paper's claims\n\n" + " ".join(preamble) + "\n\n"
            + ablation_markdown(results, (primary, further))
            + "\nEvaluations (one per seed):\n\n"
            + "".join(f"- {name}: {', '.join(uris)}\n" for name, uris in sources.items()))
    store.write_bytes(text.encode(), "ablation", "ablation.md")
    store.write_bytes(json.dumps({"results": results, "evaluations": sources,
                                  "left_out": left_out or {}},
                                 indent=2).encode(), "ablation", "ablation.json")
    return text
