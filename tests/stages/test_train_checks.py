"""Bad training settings are one line before anything trains: fsdp2 on one worker, a LoRA rank
larger than a layer, LoRA targets that match nothing, a checkpoint of another layout."""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.student.launch import check_resume
from stages.registry import STAGES
from stages.train_e2e import phase2_choices


def test_fsdp2_needs_two_workers():
    with pytest.raises(ConfigError, match=r"train_init.*fsdp2 .* needs num_workers >= 2; with "
                                          r"one worker use strategy ddp"):
        load_config("smoke", ["train_init.strategy=fsdp2"])
    load_config("smoke", ["train_init.strategy=fsdp2", "train_init.num_workers=2"])


@pytest.mark.parametrize(("override", "message"), [
    ("train_init.lora.rank=4096", r"train_init.lora: rank 4096 is larger than layer "
                                  r"\S+ \(\d+ -> \d+\); the rank can be at most \d+"),
    ("train_init.lora.target_modules=[to_qkv]",
     r"train_init.lora: target_modules \['to_qkv'\] match no linear layer .* layers: "
     r".*attention.to_q"),
])
def test_lora_settings_that_cannot_apply_are_one_line(override, message):
    cfg = load_config("smoke", ["train_init.parameterization=decoupled_lora", override])
    with pytest.raises(ConfigError, match=message) as err:
        STAGES["train_init"].check(cfg)
    assert "\n" not in str(err.value)
    STAGES["train_init"].check(load_config("smoke", ["train_init.parameterization="
                                                     "decoupled_lora"]))


def test_a_checkpoint_resumes_only_under_its_layout(tmp_path):
    folder = tmp_path / "checkpoints" / "step-0000004"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps(
        {"step": 4, "world_size": 2, "strategy": "fsdp2", "parameterization": "decoupled"}))
    check_resume(tmp_path, {"world_size": 2, "strategy": "fsdp2",
                            "parameterization": "decoupled"})
    for layout in ({"world_size": 2, "strategy": "ddp"}, {"world_size": 4, "strategy": "fsdp2"}):
        with pytest.raises(ConfigError, match=r"step-0000004: the checkpoint was written with 2 "
                                              r"worker\(s\), strategy fsdp2.*Resume with "
                                              r"num_workers=2 strategy=fsdp2, or .* --force"):
            check_resume(tmp_path, {**layout, "parameterization": "decoupled"})
    (folder / "state.json").write_text("{not json")
    with pytest.raises(Exception, match="state.json: unreadable"):
        check_resume(tmp_path, {"world_size": 2, "strategy": "fsdp2",
                                "parameterization": "decoupled"})


def test_the_manifest_describes_a_discriminator_only_where_there_is_one():
    adversarial = phase2_choices(load_config("smoke").train_e2e)
    assert {"discriminator_heads", "discriminator_layers", "gan_real", "r1"} <= set(adversarial)
    assert "adversarial" in adversarial["generator_loss"]
    plain = phase2_choices(load_config("smoke", ["train_e2e.adv_weight=0"]).train_e2e)
    assert not any(k.startswith("discriminator_") or k in ("gan_real", "adv_loss", "r1")
                   for k in plain)
    assert plain["discriminator"].startswith("none") and "adversarial" not in (
        plain["generator_loss"])
    assert "heads" not in plain["optimizers"]


def test_workers_that_the_local_ray_instance_cannot_place_are_refused_before_any_stage(
        monkeypatch):
    # smoke: ray.num_cpus 2; two workers of 2 CPUs each would wait for a placement group
    # forever, found only when phase 2 starts (after sampling and phase 1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config("smoke", ["train_e2e.num_workers=2"])
    with pytest.raises(ConfigError, match=r"^train_e2e: 2 worker\(s\) x 2 CPU\(s\) need 4 CPUs; "
                                          r"the local Ray instance \(ray.num_cpus\) has 2 "
                                          r"\(lower num_workers or cpus_per_worker\)$"):
        STAGES["train_e2e"].check(cfg)
    STAGES["train_e2e"].check(load_config("smoke", ["train_e2e.num_workers=2",
                                                    "train_e2e.cpus_per_worker=1"]))
    with pytest.raises(ConfigError, match=r"^train_init: 1 worker\(s\) x 4 CPU"):
        STAGES["train_init"].check(load_config("smoke", ["train_init.cpus_per_worker=4"]))
    # on a cluster its resources are known only once attached: the launcher checks there
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    STAGES["train_e2e"].check(cfg)


def test_an_mlflow_server_that_cannot_be_reached_is_refused_before_training():
    import socket

    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(ConfigError, match=rf"^tracking.mlflow_uri '{uri}': cannot reach "
                                          rf"127.0.0.1:{port} \("):
        STAGES["train_init"].check(load_config("smoke", [f"tracking.mlflow_uri={uri}"]))
    with socket.socket() as server:  # something listening: passes
        server.bind(("127.0.0.1", 0))
        server.listen()
        STAGES["train_e2e"].check(load_config(
            "smoke", [f"tracking.mlflow_uri=http://127.0.0.1:{server.getsockname()[1]}"]))
    STAGES["train_e2e"].check(load_config("smoke", ["tracking.mlflow_uri=sqlite:///x.db"]))


def test_discriminator_layers_beyond_the_teachers_depth_name_a_setting_that_fits(zimage_folder):
    # the default layers [1, 3] are the toy teacher's (4 blocks); a 2-block teacher of the
    # user's own is refused before any stage runs, with layers that fit it
    zimage = ["teacher.kind=zimage", f"teacher.path={zimage_folder}", "teacher.height=32",
              "teacher.width=32"]
    with pytest.raises(ConfigError, match=r"^train_e2e.discriminator.layers: discriminator "
                                          r"layers \[3\] outside 0..1 .* the teacher has 2 "
                                          r"main blocks; set it to blocks of this teacher, e.g. "
                                          r"--set 'train_e2e.discriminator.layers=\[0, 1\]'$"):
        STAGES["train_e2e"].check(load_config("smoke", zimage))
    STAGES["train_e2e"].check(load_config("smoke", [*zimage,
                                                    "train_e2e.discriminator.layers=[0, 1]"]))
    # without a discriminator nothing reads the layers
    STAGES["train_e2e"].check(load_config("smoke", [*zimage, "train_e2e.adv_weight=0"]))
