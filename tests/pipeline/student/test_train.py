"""The learning-rate schedule of both training phases."""

from __future__ import annotations

import math

import pytest

from pipeline.student.train import scheduled_lr
from schemas.config import OptimizerConfig


def test_constant_is_the_linear_warm_up_then_lr_exactly_as_before():
    cfg = OptimizerConfig(lr=2e-4, warmup_steps=20)
    # the formula before the schedule existed: runs with it are bit-identical
    before = [cfg.lr * min(1.0, (step + 1) / 20) for step in range(200)]
    assert [scheduled_lr(cfg, step, 200) for step in range(200)] == before
    assert scheduled_lr(OptimizerConfig(lr=1e-3), 0, 10) == 1e-3  # no warm-up


@pytest.mark.parametrize("ratio", [0.0, 0.1])
def test_cosine_decays_from_lr_after_the_warm_up_to_the_floor(ratio):
    cfg = OptimizerConfig(lr=1e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=ratio)
    lrs = [scheduled_lr(cfg, step, 110) for step in range(110)]
    assert lrs[:10] == [scheduled_lr(cfg.model_copy(update={"schedule": "constant"}), s, 110)
                        for s in range(10)]  # the same warm-up
    assert lrs[10] == pytest.approx(1e-4)
    assert lrs[60] == pytest.approx(1e-4 * (1 + ratio) / 2)  # half way: the mean
    assert all(a > b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # decreasing
    last = 1e-4 * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lrs[-1] == pytest.approx(last) and lrs[-1] >= 1e-4 * ratio


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_cooldown_keeps_lr_then_decays_linearly_over_the_last_steps(ratio):
    cfg = OptimizerConfig(lr=1e-4, warmup_steps=20, schedule="cooldown",
                          cooldown_fraction=0.25, min_lr_ratio=ratio)
    constant = cfg.model_copy(update={"schedule": "constant"})
    lrs = [scheduled_lr(cfg, step, 220) for step in range(220)]
    # warm-up and the constant part as the constant schedule's; the last 50 steps decay
    assert lrs[:170] == [scheduled_lr(constant, s, 220) for s in range(170)]
    tail = lrs[170:]
    assert all(a > b for a, b in zip([1e-4, *tail[:-1]], tail, strict=True))
    steps = [a - b for a, b in zip([1e-4, *tail[:-1]], tail, strict=True)]
    assert max(steps) == pytest.approx(min(steps))  # linear
    assert tail[-1] == pytest.approx(1e-4 * (1 - (1 - ratio) * 50 / 51)) and tail[-1] > 0


def test_cooldown_settings_are_keyed_only_when_they_change_a_run():
    from schemas.config import cache_view

    assert "cooldown_fraction" not in cache_view(OptimizerConfig())
    assert cache_view(OptimizerConfig(cooldown_fraction=0.5))["cooldown_fraction"] == 0.5


def test_cosine_with_no_steps_after_the_warm_up_keeps_lr():
    cfg = OptimizerConfig(lr=1e-4, warmup_steps=10, schedule="cosine")
    assert scheduled_lr(cfg, 12, 10) == 1e-4


def test_a_warm_up_as_long_as_the_run_is_named_with_the_peak_it_reaches():
    from pipeline.student.train import warmup_outlasts_run

    cfg = OptimizerConfig(lr=2e-4, warmup_steps=20)
    assert warmup_outlasts_run(cfg, 21, "train_init.optimizer") is None
    warning = warmup_outlasts_run(cfg, 5, "train_init.optimizer")
    assert warning.startswith("train_init.optimizer.warmup_steps (20) >= steps (5): the "
                              "learning rate peaks at 25% of lr (0.0002) at the last step")
    assert max(scheduled_lr(cfg, step, 5) for step in range(5)) == pytest.approx(0.25 * 2e-4)
    assert "100% of lr" in warmup_outlasts_run(cfg, 20, "x")  # reached only at the last step
