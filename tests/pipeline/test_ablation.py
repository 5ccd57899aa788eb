"""Claims are judged by the difference of the seeds' mean FD against two standard errors of the
difference, honestly both ways; one seed gives no verdict."""

from __future__ import annotations

import math

import pytest

from pipeline.ablation import (
    VARIANTS,
    Spread,
    ablation_markdown,
    judged_metrics,
    seed_overrides,
    verdict,
)


def runs(*fds: float) -> list[dict[str, float]]:
    return [{"fd_teacher": fd, "mean_accuracy": 0.9} for fd in fds]


def test_spread_is_mean_and_sample_std():
    s = Spread.of([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert math.isnan(Spread.of([4.0]).std)
    assert str(s) == "2 ± 1" and str(Spread.of([4.0])) == "4"


def test_a_difference_beyond_two_standard_errors_holds_or_not():
    # means 10 vs 12, std 0.5 each, n 3: se = sqrt(2 * 0.25 / 3) = 0.408, z = 4.9
    held = verdict(runs(9.5, 10.0, 10.5), runs(11.5, 12.0, 12.5), "fd_teacher")
    assert held.word == "holds" and held.change == pytest.approx(0.2)
    assert held.z == pytest.approx(2.0 / math.sqrt(0.5 / 3))
    reversed_ = verdict(runs(11.5, 12.0, 12.5), runs(9.5, 10.0, 10.5), "fd_teacher")
    assert reversed_.word == "does not hold"


def test_a_difference_within_the_noise_is_inconclusive():
    # the case: a 17% difference in one seed, 3.6% in another
    v = verdict(runs(4.05, 4.03), runs(4.74, 4.18), "fd_teacher")
    assert v.word == "inconclusive" and abs(v.z) <= 2.0 and v.change > 0.05


def test_one_seed_gives_no_verdict():
    v = verdict(runs(10.0), runs(20.0), "fd_teacher")
    assert v.word == "untested (1 seed)" and v.change == pytest.approx(1.0)
    assert math.isnan(v.z)


def test_higher_is_better_metrics_flip_the_sign():
    full = [{"mean_accuracy": a} for a in (0.95, 0.96, 0.97)]
    worse = [{"mean_accuracy": a} for a in (0.80, 0.81, 0.82)]
    assert verdict(full, worse, "mean_accuracy").word == "holds"


def test_seeds_set_both_training_phases():
    assert seed_overrides(2) == ["train_init.seed=2", "train_e2e.seed=2"]


def test_markdown_lists_every_variant_and_claim():
    results = {name: runs(10.0 + i, 10.2 + i, 9.8 + i) for i, name in enumerate(VARIANTS)}
    text = ablation_markdown(results)
    for name in VARIANTS:
        assert f"| {name} |" in text
    assert "step-decoupled parameterization" in text and "**holds**" in text
    assert "train_init.parameterization=shared" in text
    assert "| 3 |" in text and "10 ± 0.2" in text


def test_claims_get_a_second_verdict_on_the_distribution_where_evaluated():
    paired_only = {name: runs(10.0 + i, 10.2 + i, 9.8 + i) for i, name in enumerate(VARIANTS)}
    assert all(line.endswith("| - |") for line in ablation_markdown(paired_only).splitlines()
               if line.startswith("| step-decoupled"))
    both = {name: [{**r, "fd_teacher_unpaired": 40.0 + k * 0.5 + (name == "shared")}
                   for k, r in enumerate(runs(10.0, 10.2, 9.8))] for name in VARIANTS}
    text = ablation_markdown(both)
    (shared,) = [line for line in text.splitlines() if line.startswith("| step-decoupled")]
    # 40.0/40.5/41.0 -> 41.0/41.5/42.0: +1.0 over a standard error of 0.41
    assert shared.endswith("| holds (+2.5%, +2.4) |")
    (e2e,) = [line for line in text.splitlines() if line.startswith("| end-to-end")]
    assert e2e.endswith("| inconclusive (+0.0%, +0.0) |")


def test_claims_get_a_verdict_on_the_sample_match_where_psnr_was_scored():
    # end-to-end: the same paired FD, a higher PSNR with it (what the toy measured)
    psnr = {"full": (30.0, 30.1, 29.9), "no_end_to_end": (29.7, 29.8, 29.75)}
    results = {name: [{**r, "psnr": psnr.get(name, (30.0, 30.1, 29.9))[k]}
                      for k, r in enumerate(runs(10.0, 10.2, 9.8))] for name in VARIANTS}
    lines = ablation_markdown(results).splitlines()
    assert "| on psnr | on fd_teacher_unpaired |" in lines[len(VARIANTS) + 3]
    (e2e,) = [line for line in lines if line.startswith("| end-to-end")]
    # 30.0 ± 0.1 -> 29.75 ± 0.05: 0.25 lower over a standard error of 0.065; higher is better
    assert e2e.endswith("| **inconclusive** | 10 ± 0.2 -> 10 ± 0.2 (+0.0%) | +0.0 | "
                        "holds (+0.8%, +3.9) | - |")
    (shared,) = [line for line in lines if line.startswith("| step-decoupled")]
    assert shared.endswith("| inconclusive (+0.0%, +0.0) | - |")


def test_teachers_without_the_toy_feature_network_are_judged_on_what_they_report():
    # a Z-Image teacher: no toy FD; Inception FID where real_metrics.fid is set, else PSNR
    psnr_only = {name: [{"psnr": 16.0 + i + k * 0.1, "ssim": 0.6} for k in range(3)]
                 for i, name in enumerate(VARIANTS)}
    assert judged_metrics(psnr_only) == ("psnr", ())
    text = ablation_markdown(psnr_only)
    assert "| psnr, full -> ablated |" in text and "fd_teacher" not in text
    (shared,) = [line for line in text.splitlines() if line.startswith("| step-decoupled")]
    assert "**does not hold**" in shared  # the shared variant's PSNR is higher here
    fid = {name: [{**r, "fid_teacher": 5.0, "fid_teacher_unpaired": 9.0} for r in runs_]
           for name, runs_ in psnr_only.items()}
    assert judged_metrics(fid) == ("fid_teacher", ("psnr", "fid_teacher_unpaired"))
    # the toy: FD first, PSNR and the distribution after it
    assert judged_metrics({"full": runs(1.0)}) == ("fd_teacher",
                                                   ("psnr", "fd_teacher_unpaired"))
