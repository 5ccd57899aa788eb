"""How much of the paired FD to the teacher is the finite eval set: FD extrapolated to
infinitely many samples.

A Frechet distance estimated from N samples is biased upwards, by about ``k / N`` (Chong and
Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020:
FID_N is linear in 1/N, and its intercept FID_inf is the estimate without that bias). Here the
bias is what the FD of two feature sets with small, mostly cancelling per-sample differences
may largely consist of (docs/training.md, "the terms of the FD"). This script regenerates the
evaluated generators' eval images as `evaluate` makes them (research/toy_fd_terms.py), takes
random subsets of ``N`` of the eval samples for several ``N`` (the same rows of the generator
and the teacher: the pairing is kept), and fits ``FD_N = FD_inf + k / N`` by least squares over
every draw (pipeline/evaluation/metrics.py: extrapolated_frechet_distance, which `evaluate`
reports as ``fd_teacher_inf``; the sizes are at least half the set, so that N stays well
above the feature network's 128 dimensions). It reports FD_N at the full set (what `evaluate`
reports), FD_inf and k, for the naive 2-step teacher and both students, the mean FD over the
subsets of each size beside the fit, and the students' FD_inf as a fraction of the naive
teacher's.

    .venv/bin/python research/toy_fd_infinity.py --workspace runs/toy --evaluate KEY [KEY ...] \
        --out research/results/toy_fd_infinity.json

About 40 s per key on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

from evaluations import input_key, main_over_evaluations
from toy_fd_terms import generator_features


def measure(workspace: Path, evaluate_key: str, args=None) -> dict:
    import statistics

    from pipeline.evaluation.metrics import fit_inverse_n, frechet_distances_by_size

    draws = args.draws if args else 64
    teacher_feats, feats, evaluation = generator_features(workspace, evaluate_key)
    rows = {}
    for name, f in feats.items():
        points = frechet_distances_by_size(f, teacher_feats, draws)
        fd_inf, k = fit_inverse_n(points)
        at = {n: [fd for m, fd in points if m == n] for n in sorted({n for n, _ in points})}
        rows[name] = {"fd_full": round(points[-1][1], 4), "fd_inf": round(fd_inf, 4),
                      "k": round(k, 1),
                      "fd_at": {str(n): {"mean": round(statistics.mean(v), 4),
                                         "sd": round(statistics.pstdev(v), 4),
                                         "fit": round(fd_inf + k / n, 4), "draws": len(v)}
                                for n, v in at.items()}}
    naive = rows["teacher_2"]
    for row in rows.values():
        row["fraction_of_naive_full"] = round(row["fd_full"] / naive["fd_full"], 4)
        row["fraction_of_naive_inf"] = round(row["fd_inf"] / naive["fd_inf"], 4)
    return {"evaluate": evaluate_key, "train_e2e": input_key(evaluation, "train_e2e"),
            "samples": len(teacher_feats), "rows": rows}


def show(key: str, result: dict) -> None:
    print(f"evaluate {key} ({result['samples']} samples), {result['seconds']} s", flush=True)
    for name, row in result["rows"].items():
        print(f"  {name:15s} FD_{result['samples']} {row['fd_full']:8.3f}  FD_inf "
              f"{row['fd_inf']:8.3f}  k {row['k']:9.1f}  of naive: "
              f"{row['fraction_of_naive_full']:.2%} / {row['fraction_of_naive_inf']:.2%}",
              flush=True)


def add_arguments(parser) -> None:
    parser.add_argument("--draws", type=int, default=64, help="random subsets per size below 1")


if __name__ == "__main__":
    raise SystemExit(main_over_evaluations(__doc__.splitlines()[0], measure, show,
                                           add_arguments))
