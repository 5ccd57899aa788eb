"""The pre-flight of a run (stages/registry.py): what it refuses before any stage starts."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError, NotApplicable
from stages.registry import STAGES, check_variants, prepare_run


def test_an_object_store_workspace_is_refused_before_curation_when_training_follows():
    # curate and sample_teacher write through fsspec; training, evaluation and export need
    # local files: the run must stop before curation, not after hours of sampling
    with pytest.raises(ConfigError, match=r"workspace 'memory://twostep-preflight': training, "
                                          r".*use a local or mounted \(NFS\) workspace, not "
                                          r"memory://") as err:
        prepare_run("smoke", [], "memory://twostep-preflight", None)
    assert "\n" not in str(err.value)
    # the stages that can write to an object store still run there
    prepare_run("smoke", [], "memory://twostep-preflight", ["curate"])


def test_the_stages_on_local_files_are_the_training_evaluation_and_export_stages():
    assert [name for name, spec in STAGES.items() if spec.local_files] == [
        "train_init", "train_e2e", "evaluate", "export"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["curate.eval_fraction=0"], r"^curate.eval_fraction is 0: evaluate needs eval prompts; "
                                 r"set it > 0 .* --only train_e2e$"),
    (["sample_teacher.max_eval_prompts=1"], r"^sample_teacher.max_eval_prompts=1 with "
                                            r"eval_samples_per_prompt=1 gives evaluate fewer "
                                            r"than 2 eval samples; raise either$"),
])
def test_an_eval_split_too_small_to_score_is_refused_before_curation(tmp_path, overrides,
                                                                     message):
    with pytest.raises(ConfigError, match=message):
        prepare_run("smoke", overrides, str(tmp_path / "ws"), None)
    assert not (tmp_path / "ws" / "curate").exists()
    # what evaluate can score passes, and a run that does not evaluate is not refused
    prepare_run("smoke", ["sample_teacher.max_eval_prompts=1",
                          "sample_teacher.eval_samples_per_prompt=2"], str(tmp_path / "ws"), None)
    prepare_run("smoke", overrides, str(tmp_path / "ws"), ["curate", "sample_teacher"])


def test_an_ablation_leaves_out_the_variants_its_teacher_does_not_support(tmp_path,
                                                                          zimage_folder):
    # gan_real=data needs the toy world's ground-truth renders: a Z-Image ablation runs the
    # other variants, and says which it left out and why
    zimage = ["teacher.kind=zimage", f"teacher.path={zimage_folder}", "teacher.height=32",
              "teacher.width=32", "train_e2e.discriminator.layers=[0,1]"]
    names, left_out = check_variants("smoke", zimage, str(tmp_path / "ws"), None, 2)
    assert "gan_real_data" not in names and {"full", "shared", "no_end_to_end"} <= set(names)
    assert list(left_out) == ["gan_real_data"]
    assert left_out["gan_real_data"] == "gan_real=data needs the toy world's ground-truth renders"
    # named, it is the user's request: refused in one line with the way out
    with pytest.raises(NotApplicable, match=r"^ablation variant gan_real_data .*--variant"):
        check_variants("smoke", zimage, str(tmp_path / "ws"), ["full", "gan_real_data"], 1)
    # the run's own settings are not a variant to leave out: refused
    with pytest.raises(NotApplicable, match=r"^train_e2e.gan_real=data is implemented for the "
                                            r"toy world"):
        check_variants("smoke", [*zimage, "train_e2e.gan_real=data"], str(tmp_path / "ws"),
                       None, 1)
    # the toy teacher supports every variant
    names, left_out = check_variants("smoke", [], str(tmp_path / "ws"), None, 1)
    assert "gan_real_data" in names and not left_out


def test_an_ablation_refuses_unknown_or_repeated_variants(tmp_path):
    """A repeated variant would count its cached result as one more seed of itself (two seeds
    with a spread of 0, and a claim that 'holds' on no evidence)."""
    with pytest.raises(ConfigError, match=r"^unknown variant 'shard' \(variants: full, shared"):
        check_variants("smoke", [], str(tmp_path / "ws"), ["full", "shard"], 1)
    with pytest.raises(ConfigError, match=r"^variant shared is given twice \(--variant, or the "
                                          r"flow's variants\); give each once"):
        check_variants("smoke", [], str(tmp_path / "ws"), ["full", "shared", "shared"], 1)


def test_only_a_stage_whose_upstream_is_not_cached_is_refused_before_the_run(tmp_path):
    """It started Prefect and Ray and failed inside the flow (exit 1, ERROR log lines)."""
    from pipeline.errors import StageDependencyError

    with pytest.raises(StageDependencyError, match=r"^stage curate has no finished result for "
                                                   r"this config .*include it in --only$"):
        prepare_run("smoke", [], str(tmp_path / "ws"), ["sample_teacher"])
