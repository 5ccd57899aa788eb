"""Claims are judged by the relative change of the FD to the teacher, honestly both ways."""

from __future__ import annotations

from pipeline.ablation import VARIANTS, ablation_markdown, verdict


def test_verdicts():
    assert verdict({"fd_teacher": 10.0}, {"fd_teacher": 20.0}) == ("holds", 1.0)
    assert verdict({"fd_teacher": 10.0}, {"fd_teacher": 5.0})[0] == "does not hold"
    assert verdict({"fd_teacher": 10.0}, {"fd_teacher": 10.2})[0] == "inconclusive"


def test_markdown_lists_every_variant_and_claim():
    results = {name: {"fd_teacher": 10.0 + i, "mean_accuracy": 0.8}
               for i, name in enumerate(VARIANTS)}
    text = ablation_markdown(results)
    for name in VARIANTS:
        assert f"| {name} |" in text
    assert "step-decoupled parameterization" in text and "**holds**" in text
    assert "train_init.parameterization=shared" in text
