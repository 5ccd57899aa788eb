"""Config presets, overrides and the one-line errors for bad configs."""

from __future__ import annotations

import pytest

from pipeline.config import available_presets, load_config, parse_override, workspace_of
from pipeline.errors import ConfigError
from schemas.config import FileSource, ToySource


@pytest.mark.parametrize("preset", ["toy", "smoke", "zimage-turbo"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert preset in available_presets()


def test_overrides_are_typed_and_nested():
    cfg = load_config("smoke", ["curate.near_dedup.threshold=0.7", "curate.min_words=2",
                                "ray.num_cpus=1", "curate.blocklist=['a+', 'b']"])
    assert cfg.curate.near_dedup.threshold == 0.7
    assert cfg.curate.min_words == 2 and cfg.ray.num_cpus == 1
    assert cfg.curate.blocklist == ["a+", "b"]


def test_sources_default_to_files_and_list_items_are_addressable():
    cfg = load_config("smoke", ["curate.sources=[{path: a.txt}, {kind: toy, num_prompts: 3}]",
                                "curate.sources.0.field=text"])
    assert isinstance(cfg.curate.sources[0], FileSource) and cfg.curate.sources[0].field == "text"
    assert isinstance(cfg.curate.sources[1], ToySource)


def test_workspace_defaults_to_runs_preset():
    assert workspace_of(load_config("toy")) == "runs/toy"
    assert workspace_of(load_config("toy", workspace="/x/y")) == "/x/y"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["curate.min_wrds=3"], r"smoke.yaml \(with overrides\): curate.min_wrds: unknown field "
                                r"\(got 3\); did you mean 'min_words'\?$"),
        (["curate.min_words=abc"], r"curate.min_words: Input should be a valid integer.*'abc'"),
        (["curate.near_dedup.threshold=2"], r"curate.near_dedup.threshold: .*less than or equal"),
        (["curate.blocklist=['(']"], r"blocklist\[0\] '\(' is not a valid regex"),
        (["curate.sources=[{kind: web}]"], r"source kind must be 'file'"),
        (["curate.min_words=9", "curate.max_words=3"], r"min_words \(9\) > max_words \(3\)"),
        (["nonsense"], r"override 'nonsense' must look like 'section.field=value'"),
        (["curate.min_words=[1,"], r"override 'curate.min_words=\[1,': value '\[1,' is not "
                                   r"valid YAML at column 4: expected the node content, but "
                                   r"found '<stream end>' \(while parsing a flow node"),
        (["curate.sources.7.path=x"], r"list index below 1"),
        (["train_e2e.adv_weighting=adaptive", "train_e2e.final_weight=0"],
         r"train_e2e: .*adv_weighting=adaptive .*final_weight=0 switches off"),
        (["train_e2e.steps=10", "train_e2e.adv_start_step=10"],
         r"train_e2e: .*adv_start_step \(10\) >= steps \(10\): the adversarial term would "
         r"never act"),
        (["train_e2e.steps=10", "train_e2e.adv_start_step=9", "train_e2e.adv_warmup_steps=5"],
         r"train_e2e: .*adv_start_step \(9\) \+ 1 \(the adv_warmup_steps ramp is 0 at its "
         r"first step\) = 10 >= steps \(10\): the adversarial term would never act"),
        (["train_e2e.steps=1", "train_e2e.adv_warmup_steps=1"],
         r"adv_start_step \(0\) \+ 1 .* = 1 >= steps \(1\)"),
        (["train_e2e.adv_weight=0", "train_e2e.step1_weight=0", "train_e2e.final_weight=0"],
         r"train_e2e: .*adv_weight, step1_weight, final_weight, feature_weight and "
         r"pixel_weight are all 0: phase 2 would train nothing"),
        (["evaluate.extra_students={student: /x}"],
         r"evaluate.extra_students: .*'student' is the name of one of the run's own "
         r"generators .*choose another"),
        (["evaluate.extra_students={teacher_2: /x}"], r"'teacher_2' is the name"),
        (["train_e2e.gan_real=data", "train_e2e.adv_weight=0"],
         r"train_e2e: .*gan_real=data chooses the discriminator's real samples, but "
         r"adv_weight=0 trains no discriminator"),
        (["train_e2e.strategy=fsdp2", "train_e2e.num_workers=2",
          "train_e2e.discriminator.r1_weight=1.0"],
         r"train_e2e: .*r1_weight > 0 needs a double backward through the discriminator's "
         r"backbone, which strategy fsdp2 shards .* set discriminator.r1_weight=0 or "
         r"strategy=ddp"),
        (["export.max_shard_size=5GiB"], r"export.max_shard_size: String should match"),
    ],
)
def test_bad_configs_are_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("smoke", overrides)
    assert "\n" not in str(info.value)


def test_adversarial_settings_without_the_adversarial_term_are_no_contradiction():
    """At adv_weight 0 adaptive weighting has nothing to scale: final_weight 0 is allowed."""
    cfg = load_config("smoke", ["train_e2e.adv_weight=0", "train_e2e.adv_weighting=adaptive",
                                "train_e2e.final_weight=0"])
    assert not cfg.train_e2e.adversarial
    # no discriminator, no R1: FSDP2 is fine; under DDP R1 is fine
    load_config("smoke", ["train_e2e.strategy=fsdp2", "train_e2e.num_workers=2",
                          "train_e2e.discriminator.r1_weight=1.0", "train_e2e.adv_weight=0"])
    load_config("smoke", ["train_e2e.num_workers=2", "train_e2e.discriminator.r1_weight=1.0"])


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config 'nope'.*presets: .*smoke"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_config(str(bad))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"config file not found: .*missing.yaml"):
        load_config(str(missing))


def test_parse_override_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a='007'") == (["a"], "007")
    assert parse_override("a=null") == (["a"], None)


def test_an_old_config_with_sample_teacher_teacher_is_told_where_it_moved():
    with pytest.raises(ConfigError) as err:
        load_config("smoke", ["sample_teacher.teacher.dtype=float32"])
    message = str(err.value)
    assert message.count("\n") == 0
    assert "sample_teacher" in message and "top-level `teacher:`" in message
    assert load_config("smoke", ["teacher.dtype=float32"]).teacher.dtype == "float32"


def test_cache_view_leaves_out_speed_only_fields_at_every_depth():
    from schemas.config import TrainE2EConfig, cache_view

    view = cache_view(TrainE2EConfig())
    assert "cpus_per_worker" not in view and "log_every" not in view
    assert "steps" in view and view["discriminator"]["layers"] == [1, 3]
    cfg = load_config("smoke", ["evaluate.real_metrics.clip={path: x}"])
    nested = cache_view(cfg.evaluate)
    assert "batch_size" not in nested and "batch_size" not in nested["real_metrics"]["clip"]
    # Without speed-only fields the view is exactly the JSON dump (keys stay stable).
    plain = cfg.curate.model_dump(mode="json")
    plain.pop("batch_size")
    assert cache_view(cfg.curate) == plain
    # A field added after results were cached is keyed only away from its default.
    assert "pixel_weight" not in view
    assert cache_view(TrainE2EConfig(pixel_weight=1.0))["pixel_weight"] == 1.0


def test_the_readmes_config_files_are_valid(tmp_path):
    """Every YAML config shown in README.md loads as it is written (docs match the schema)."""
    import re

    from tests.conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"readme-{i}.yaml"
        path.write_text(block)
        cfg = load_config(str(path))
        assert cfg.name
