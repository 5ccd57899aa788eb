"""The `distill` command as a user runs it: clear one-line errors, run, cache, status."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def distill(*args: str, cwd=None, timeout: int = 300, columns: int = 200,
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd or REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "curate.near_dedup.treshold=0.9"],
         "curate.near_dedup.treshold: unknown field (got 0.9); did you mean 'threshold'?"),
        (["--set", "curate.max_chars=lots"], "curate.max_chars: Input should be a valid integer"),
        (["--set", "curate.sources=[{path: /no/such/prompts.txt}]"],
         "curate.sources[0].path: source file not found: /no/such/prompts.txt"),
        (["--only", "curat"], "unknown stage 'curat'"),
        (["--config", "/no/such.yaml"], "config file not found: /no/such.yaml"),
        (["--set", "ray.address=127.0.0.1:9"], "ray.address '127.0.0.1:9': cannot reach"),
        (["--workspace", "nosuchproto://x/y"], "workspace 'nosuchproto://x/y'"),
        (["--set", "evaluate.real_metrics.fid.weights=/no/inception.safetensors"],
         "evaluate.real_metrics.fid.weights: file not found: /no/inception.safetensors"),
        (["--set", "evaluate.real_metrics.clip={path: /no/clip}"],
         "evaluate.real_metrics.clip.path: not a CLIP model folder (no config.json): /no/clip"),
    ],
)
def test_user_mistakes_are_one_clear_line(args, message, tmp_path):
    result = distill("run", "--config", "smoke", "--workspace", str(tmp_path / "ws"), *args)
    if "--workspace" in args:  # the later option wins
        result = distill("run", "--config", "smoke", *args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ws").exists()


def test_usage_mistakes_are_one_line_naming_the_help():
    """Click's own mistakes were typer's five-line usage box; now one line like the rest."""
    cases = [
        (("run", "--seed", "1"),
         "error: No such option: --seed (Possible options: --set); see 'distill run --help'"),
        (("generate", "--prompt", "a red circle"),
         "error: Missing option '--out'; see 'distill generate --help'"),
        (("toy", "build-teacher", "--minutes", "x"),
         "error: No such option: --minutes; see 'distill toy build-teacher --help'"),
        (("frob",), "error: No such command 'frob'; see 'distill --help'"),
    ]
    for args, message in cases:
        result = distill(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        # run as `python -m flows.cli`, click names the command as it was called
        assert _one_error_line(result) == message.replace("'distill", "'python -m flows.cli")
    bare = distill()  # no command: the help, as before
    assert bare.returncode == 2 and "Usage: python -m flows.cli" in bare.stdout


def test_an_ablation_variant_that_contradicts_the_run_is_named_before_anything_runs(tmp_path):
    """Without the adversarial term the gan_real_data variant has no discriminator to vary."""
    result = distill("ablate", "--config", "smoke", "--workspace", str(tmp_path / "ws"),
                     "--set", "train_e2e.adv_weight=0")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ablation variant gan_real_data (train_e2e.gan_real=data)")
    assert "adv_weight=0 trains no discriminator" in lines[0] and "--variant" in lines[0]
    assert not (tmp_path / "ws").exists()


@pytest.mark.slow
def test_error_inside_a_stage_is_one_line_too(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "a red circle"}, {"prompt": ')
    result = distill("run", "--config", "smoke", "--workspace", str(tmp_path / "ws"),
                     "--set", f"curate.sources=[{{path: '{bad}'}}]")
    assert result.returncode == 1
    # no traceback, not even the empty one Prefect logs for a task that returns Failed
    assert "Traceback" not in result.stderr + result.stdout
    assert "NoneType: None" not in result.stderr + result.stdout
    assert "error: curate: curate.sources[0]: " in result.stderr
    assert "bad.json is not valid JSON (line 1, column 41" in result.stderr


@pytest.mark.slow
def test_run_twice_is_cached_and_status_reports_it(tmp_path):
    ws = str(tmp_path / "ws")
    first = distill("run", "--config", "smoke", "--workspace", ws, "--only", "curate")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "computed" in first.stdout
    second = distill("run", "--config", "smoke", "--workspace", ws, "--only", "curate")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "cached" in second.stdout and "computed" not in second.stdout
    # a run with nothing to compute answers from the cache: no Prefect server, no Ray
    assert "every stage is a cache hit" in second.stdout
    assert "temporary server" not in second.stdout + second.stderr
    status = distill("status", "--workspace", ws)
    assert status.returncode == 0, status.stderr
    assert "curate" in status.stdout and "cached" in status.stdout
    assert "never run" in status.stdout  # later stages
    # piped output is 80 columns wide: the keys stay whole, to be copied or grepped
    import json

    key = json.loads((tmp_path / "ws" / "curate" / "latest.json").read_text())["key"]
    for args in (("status", "--workspace", ws),
                 ("run", "--config", "smoke", "--workspace", ws, "--only", "curate")):
        assert key in distill(*args, columns=80).stdout
    # a damaged record of one stage is named, after the table of the others
    (tmp_path / "ws" / "sample_teacher").mkdir()
    (tmp_path / "ws" / "sample_teacher" / "latest.json").write_text("{not json")
    status = distill("status", "--workspace", ws)
    assert status.returncode == 2 and key in status.stdout and "never run" in status.stdout
    assert [line for line in status.stderr.splitlines() if line.startswith("error:")] == [
        next(line for line in status.stderr.splitlines() if "sample_teacher/latest.json: "
             "unreadable" in line and "delete it, the next run rewrites it" in line)]


def test_status_of_a_missing_workspace(tmp_path):
    result = distill("status", "--workspace", str(tmp_path / "none"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_build_features_writes_only_when_accurate_enough(tmp_path):
    small = ["toy", "build-features", "--train-size", "200", "--test-size", "100",
             "--epochs", "1", "--out", str(tmp_path / "net")]
    refused = distill(*small, "--min-accuracy", "1.0")
    assert refused.returncode == 1 and "nothing written" in refused.stderr
    assert not (tmp_path / "net").exists()
    accepted = distill(*small, "--min-accuracy", "0.0")
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "net" / "model.safetensors").is_file()
    assert (tmp_path / "net" / "build.json").is_file()


def test_generate_writes_pngs_index_and_contact_sheet(tmp_path, zimage_folder):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left\n\na big blue square at the top\n")
    out = tmp_path / "out"
    result = distill("generate", "--generator", "teacher", "--teacher", "zimage",
                     "--teacher-path", str(zimage_folder), "--steps", "2", "--prompts-file",
                     str(prompts), "--seed", "7", "--num-images", "2", "--out", str(out),
                     "--height", "32")  # width as height; the default is Z-Image's 1024
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    records = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert [r["seed"] for r in records] == [7, 8, 9, 10]
    assert records[2]["prompt"] == "a big blue square at the top"
    assert all((out / r["file"]).is_file() for r in records)
    assert (out / "contact_sheet.png").is_file()


def test_generate_refuses_options_it_would_ignore(tmp_path, capsys):
    """Each was accepted and had no effect (checked in-process: the choices come before any
    model is loaded)."""
    import typer

    from flows.cli.generate import check_choices

    cases = [  # generator, model, workspace, teacher, teacher_path, steps, height, width
        (("ground-truth", None, None, None, None, 8, None, None), "--steps and --teacher-path"),
        (("ground-truth", None, None, "toy", "/t", None, None, None), "--steps and --teacher-"),
        ((None, tmp_path, None, None, "/t", None, None, None), "--model is a whole exported"),
        (("student", tmp_path, None, "toy", None, None, None, None), "--teacher and --teache"),
    ]
    for args, message in cases:
        with pytest.raises(typer.Exit):
            check_choices(*args)
        assert message in capsys.readouterr().err, args
    assert check_choices(None, tmp_path, None, None, None, 2, 32, 32) == "student"
    assert check_choices("ground-truth", None, None, "toy", None, None, 32, 32) == "ground-truth"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--teacher", "zimage", "--teacher-path", "/no/such/folder", "--prompt", "x"],
         "Z-Image teacher folder not found: /no/such/folder"),
        (["--teacher", "toy", "--teacher-path", "/no/such/folder", "--prompt", "x"],
         "not a toy teacher folder"),
        (["--prompts-file", "/no/such.txt"], "--prompts-file /no/such.txt: not found"),
        ([], "give either --prompt or --prompts-file"),
        (["--prompt", "a red circle", "--prompt", "  "], "--prompt number 2 is blank"),
        (["--prompt", "x", "--device", "gpu"], "--device 'gpu'"),
        (["--prompt", "x", "--generator", "ground-truth", "--height", "64"],
         "ground-truth renders the toy world"),
    ],
)
def test_generate_errors_are_one_line(args, message, tmp_path):
    result = distill("generate", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


def test_generate_ground_truth_renders_what_the_prompt_names(tmp_path):
    out = tmp_path / "gt"
    result = distill("generate", "--generator", "ground-truth", "--prompt",
                     "a large red square in the center on a white background",
                     "--num-images", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    import numpy as np
    from PIL import Image

    for name in ("00000.png", "00001.png", "00002.png"):
        img = np.asarray(Image.open(out / name))
        assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[16, 16]) == (255, 0, 0)


def test_convert_inception_writes_safetensors_or_one_error_line(tmp_path):
    import torch

    from tests.metric_miniatures import fid_state_dict

    torch.save(fid_state_dict(), tmp_path / "pt_inception.pth")
    result = distill("metrics", "convert-inception", str(tmp_path / "pt_inception.pth"),
                     str(tmp_path / "inception.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "wrote 470 tensors" in result.stdout
    result = distill("metrics", "convert-inception", str(tmp_path / "missing.pth"),
                     str(tmp_path / "out.safetensors"))
    assert result.returncode == 2 and "missing.pth: file not found" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.safetensors").exists()


def test_refine_decoder_keeps_the_latent_space_and_refuses_pixel_teachers(tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from pipeline.toy.autoencoder import AutoencoderConfig, ToyAutoencoder
    from pipeline.toy.teacher import TeacherTrainConfig, new_teacher, save_teacher

    latent = TeacherTrainConfig(dim=32, n_layers=1, n_heads=2,
                                autoencoder=AutoencoderConfig(channels=4, width=8))
    autoencoder = ToyAutoencoder(latent.autoencoder)
    save_teacher(new_teacher(latent), {"steps": 0}, tmp_path / "latent", autoencoder=autoencoder)
    before = load_file(str(tmp_path / "latent" / "autoencoder" / "model.safetensors"))
    result = distill("toy", "refine-decoder", "--teacher", str(tmp_path / "latent"),
                     "--epochs", "1", "--samples", "64", "--eval-prompts", "8")
    assert result.returncode == 0, result.stderr
    after = load_file(str(tmp_path / "latent" / "autoencoder" / "model.safetensors"))
    for name, tensor in before.items():  # the encoder is frozen, the decoder trained
        changed = not torch.equal(tensor, after[name])
        assert changed == name.startswith("decoder."), name
    build = json.loads((tmp_path / "latent" / "build.json").read_text())
    assert build["steps"] == 0 and len(build["decoder_refinements"]) == 1
    assert set(build["accuracy_8_step"]) >= {"shape", "color"}

    pixel = TeacherTrainConfig(dim=32, n_layers=1, n_heads=2, space="pixel", patch=4)
    save_teacher(new_teacher(pixel), {}, tmp_path / "pixel")
    refused = distill("toy", "refine-decoder", "--teacher", str(tmp_path / "pixel"))
    assert refused.returncode == 2
    assert "not a latent toy teacher" in refused.stderr and "Traceback" not in refused.stderr
    (tmp_path / "latent" / "build.json").write_text("[1]")  # checked before the training
    refused = distill("toy", "refine-decoder", "--teacher", str(tmp_path / "latent"))
    assert refused.returncode == 2
    assert _one_error_line(refused) == (f"error: {tmp_path / 'latent' / 'build.json'}: not a "
                                        f"build record (a JSON object)")


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_build_teacher_refuses_a_guidance_phase_longer_than_the_build(tmp_path):
    result = distill("toy", "build-teacher", "--out", str(tmp_path / "t"), "--set", "minutes=3")
    assert result.returncode == 2
    line = _one_error_line(result)
    assert "guidance_minutes 5.0 must be above 0 and below the build's 3.0 minutes" in line
    assert "(or guidance 1: no guidance phase)" in line  # the way out
    assert result.stdout == "" and not (tmp_path / "t").exists()  # no training log, no folder


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("minuts=5", "build-teacher --set: minuts: unknown field (got 5)"),
        ("autoencoder.widht=64", "build-teacher --set: autoencoder.widht: unknown field"),
        ("minutes=lots", "build-teacher --set: minutes: Input should be a valid number"),
        ("space=voxel", "space 'voxel': must be one of latent, pixel"),
        ("minutes", "override 'minutes' must look like"),
    ],
)
def test_build_teacher_set_mistakes_are_one_line_before_any_training(item, message, capsys):
    """In process: the parsing and checking that `build-teacher` runs first, before it imports
    torch (the command's own exit 2, one line, no folder: the subprocess test above)."""
    import typer

    from flows.cli.toy import teacher_build_config

    with pytest.raises(typer.Exit) as exit_info:
        teacher_build_config(["guidance=1", item])
    assert exit_info.value.exit_code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], \
        captured.err
    assert captured.out == ""


def test_build_teacher_set_items_are_parsed_as_distill_run_overrides():
    from flows.cli.toy import teacher_build_config

    cfg = teacher_build_config(["minutes=5", "space=pixel", "autoencoder.width=64",
                                "autoencoder_training.epochs=2", "guidance=1", "seed=3"])
    assert (cfg.minutes, cfg.space, cfg.guidance, cfg.seed) == (5.0, "pixel", 1.0, 3)
    assert cfg.patch == 4  # the pixel default (latent: 1)
    assert cfg.autoencoder.width == 64 and cfg.autoencoder_training.epochs == 2
    assert cfg.autoencoder_training.seed == 3  # follows seed unless set
    assert teacher_build_config(["seed=3", "autoencoder_training.seed=9"]
                                ).autoencoder_training.seed == 9
    assert teacher_build_config([]).model_dump() == teacher_build_config(
        ["space=latent", "patch=null"]).model_dump()


@pytest.mark.slow
def test_build_teacher_with_set_items_builds_and_records_them(tmp_path):
    import json

    sets = ["space=pixel", "dim=32", "n_layers=1", "n_heads=2", "max_steps=2", "pool_prompts=40",
            "pool_images=16", "batch=4", "warmup=1", "guidance=1", "minutes=10"]
    result = distill("toy", "build-teacher", "--out", str(tmp_path / "t"), "--min-accuracy", "0",
                     *[arg for item in sets for arg in ("--set", item)])
    assert result.returncode == 0, result.stderr[-2000:]
    build = json.loads((tmp_path / "t" / "build.json").read_text())
    assert build["steps"] == 2 and set(build["accuracy_2_step"]) >= {"shape", "color"}
    assert build["config"]["space"] == "pixel" and build["config"]["patch"] == 4
    assert "--set dim=32" in build["command"]

    # The default gate (every attribute >= 0.9 at 8 steps): a two-step build falls short, and
    # the good folder stays as it was while the build is kept beside it.
    before = (tmp_path / "t" / "build.json").read_bytes()
    result = distill("toy", "build-teacher", "--out", str(tmp_path / "t"),
                     *[arg for item in sets for arg in ("--set", item)])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.splitlines()[-1]  # after the build's own progress output
    assert line.startswith("error: 8-step ") and line.count("error:") == 1
    assert "accuracy" in line and "is below --min-accuracy 0.9" in line
    assert f"written to {tmp_path / 't.rejected'}" in line
    assert (tmp_path / "t" / "build.json").read_bytes() == before
    assert json.loads((tmp_path / "t.rejected" / "build.json").read_text())["steps"] == 2


def test_outputs_and_servers_are_checked_before_any_work(tmp_path):
    """Found by running the CLI on wrong targets: a build deleted the folder --out named, a
    workspace or --out that cannot be written failed after the work in a traceback, a Prefect
    URL that answers nothing failed deep in the flow, and the dashboard exited 0 when MLflow
    could not bind. Each is now one line before anything runs."""
    import socket

    a_file = tmp_path / "a.txt"
    a_file.write_text("keep me\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me too\n")
    cases = [
        (("toy", "build-teacher", "--out", str(other), "--set", "guidance=1"),
         f"--out {other}: holds other files, not a toy teacher, and the build replaces the "
         f"folder whole: give a new or empty folder"),
        (("toy", "build-features", "--out", str(a_file)),
         f"--out {a_file}: exists and is not a folder"),
        (("generate", "--prompt", "a red circle", "--out", str(a_file / "sub")),
         f"--out {a_file / 'sub'}: cannot be created ({a_file} is not a folder)"),
        (("run", "--config", "smoke", "--workspace", str(a_file), "--only", "curate"),
         f"workspace {a_file}: exists and is not a folder; give another --workspace"),
        (("generate", "--prompt", "a red circle", "--out", str(tmp_path / "g"), "--seed",
          str(2**63 - 1), "--num-images", "2"),  # was "Overflow when unpacking long long"
         f"--seed {2**63 - 1}: image i uses seed SEED + i, which must lie in 0..{2**63 - 1}; "
         f"give a seed from 0 to {2**63 - 2}"),
        (("generate", "--prompt", "a red circle", "--out", str(tmp_path / "g"), "--device",
          "meta"), "--device meta: use cpu or cuda[:N]"),  # was a traceback after loading
        (("metrics", "convert-inception", str(a_file), str(other)),  # left an 87 MB .tmp-
         f"{other}: is a folder; give the file to write, e.g. "
         f"{other / 'inception-2015-12-05.safetensors'}"),
    ]
    for args, message in cases:
        result = distill(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert _one_error_line(result) == f"error: {message}", args
    assert a_file.read_text() == "keep me\n" and sorted(p.name for p in other.iterdir()) == [
        "notes.txt"]

    tracked = tmp_path / "tracked"
    tracked.mkdir()
    (tracked / "mlflow.db").write_bytes(b"")  # the port is checked before MLflow reads it
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = distill("dashboard", "--workspace", str(tracked), "--port", str(port))
    assert result.returncode == 2
    assert _one_error_line(result).startswith(f"error: cannot serve on 127.0.0.1:{port} (")

    dead = "http://127.0.0.1:9/api"  # nothing listens on the discard port
    env = {**os.environ, "PREFECT_API_URL": dead, "COLUMNS": "200"}
    for args in (("run", "--config", "smoke", "--workspace", str(tmp_path / "ws"), "--only",
                  "curate"), ("serve",)):
        result = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert _one_error_line(result).startswith(
            f"error: PREFECT_API_URL is {dead}, and no Prefect server answers there")
    # a command that never talks to Prefect says nothing about it
    quiet = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], cwd=REPO_ROOT,
                           env={**env, "PREFECT_API_URL": "notaurl"}, capture_output=True,
                           text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == ""
