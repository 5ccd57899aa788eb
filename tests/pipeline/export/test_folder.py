"""Exported pipeline folders: loaded by diffusers alone, they sample exactly what the student
samples, on the schedule it was trained on; broken folders are refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.export.folder import check_export, load_exported, write_pipeline
from pipeline.generate import noise_for_seeds
from pipeline.student.model import TwoStepStudent
from pipeline.teachers import load_teacher

PROMPTS = ["a red circle on the left", "a small blue square at the top"]
INFO = {"format_version": 1}


def _perturb(student: TwoStepStudent) -> TwoStepStudent:
    # A student that is not the teacher's copy: G1 and G2 differ.
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for g in student.transformers():
            for p in g.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 1e-2)
    return student.eval()


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory):
    teacher = load_teacher("toy")
    student = _perturb(TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75))
    out = tmp_path_factory.mktemp("export") / "pipeline"
    write_pipeline(student, teacher, out, dtype=torch.float32, max_shard_size="5GB",
                   height=32, width=32, info=INFO, card="# card\n")
    return teacher, student, out


def test_toy_export_samples_exactly_what_the_student_samples(toy_export):
    teacher, student, out = toy_export
    pipe = load_exported(out)
    # The trained schedule, exactly: the scheduler does not shift it again.
    pipe.scheduler.set_timesteps(sigmas=pipe.sigmas[:-1])
    assert pipe.scheduler.sigmas.tolist() == [1.0, 0.75, 0.0]
    assert pipe.scheduler.timesteps.tolist() == [1000.0, 750.0]
    caps = teacher.encode_prompts(PROMPTS)
    noise = noise_for_seeds([5, 6], teacher.latent_shape(32, 32))
    expected = student.sample(noise, caps)
    seeds = [torch.Generator().manual_seed(s) for s in (5, 6)]
    latents = pipe(PROMPTS, generator=seeds, output_type="latent").images
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=0)
    images = pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                  output_type="pt").images
    torch.testing.assert_close(images, teacher.decode(expected), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="distilled for 2 steps"):
        pipe(PROMPTS[0], num_inference_steps=8)
    with pytest.raises(ValueError, match="guidance_scale=0"):
        pipe(PROMPTS[0], guidance_scale=3.0)
    for height, width in ((64, 64), (32, 40), (16, 16)):  # the decoder would make any size
        with pytest.raises(ValueError, match=f"^{height}x{width} px: a toy model makes 32x32 "
                                             "images only"):
            pipe(PROMPTS[0], height=height, width=width)


def test_export_folder_layout_names_the_code_file(toy_export):
    _, _, out = toy_export
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_twostep", "TwoStepPipeline"]
    assert index["transformer"] == index["transformer_2"] == ["diffusers",
                                                             "ZImageTransformer2DModel"]
    assert index["boundary_sigma"] == 0.75 and index["text_encoding"] == "minilm"
    assert (out / "pipeline_twostep.py").is_file() and (out / "README.md").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    assert check_export(out) == INFO


def test_shared_student_bf16_and_sharded_weights(tmp_path):
    teacher = load_teacher("toy")
    student = _perturb(TwoStepStudent.from_teacher(teacher.transformer, "shared", 0.75))
    out = tmp_path / "pipeline"
    write_pipeline(student, teacher, out, dtype=torch.bfloat16, max_shard_size="1MB",
                   height=32, width=32, info=INFO)
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer_2"] == [None, None] and not (out / "transformer_2").exists()
    shards = sorted((out / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and (out / "transformer" /
                                "diffusion_pytorch_model.safetensors.index.json").is_file()
    from safetensors import safe_open

    with safe_open(str(shards[0]), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    pipe = load_exported(out, dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.transformer_2 is None
    caps = teacher.encode_prompts(PROMPTS[:1])
    noise = noise_for_seeds([1], teacher.latent_shape(32, 32))
    bf16 = TwoStepStudent(student.g1.to(torch.bfloat16), None, 0.75).sample(noise, caps)
    latents = pipe(PROMPTS[:1], generator=[torch.Generator().manual_seed(1)],
                   output_type="latent").images
    torch.testing.assert_close(latents, bf16, atol=1e-5, rtol=0)


def test_broken_exports_are_refused_in_one_line(toy_export, tmp_path):
    import shutil

    _, _, out = toy_export
    with pytest.raises(ArtifactError, match="not a twostep export .*a teacher folder"):
        check_export(_plain_teacher_folder(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ArtifactError, match=r"broken/vae: component vae missing"):
        check_export(broken)
    shutil.copytree(out / "text_encoder", broken / "vae")
    (broken / "transformer" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ArtifactError, match=r"pytorch_model.bin: weights must be safetensors"):
        check_export(broken)
    with pytest.raises(ArtifactError, match="no such folder"):
        check_export(tmp_path / "nothing")
    # JSON of the wrong shape, a missing code file, a truncated weight file: one line each
    # (were AttributeError, IndexError and SafetensorError tracebacks)
    for name, text, message in (("model_index.json", "[1, 2, 3]", "not a JSON object"),
                                ("twostep.json", "[1]", "not a JSON object"),
                                ("model_index.json", None, r"component 'vae' is \[\], not "
                                                           r"\[library, class\]")):
        damaged = tmp_path / f"damaged-{name}-{text}"
        shutil.copytree(out, damaged)
        if text is None:
            index = json.loads((damaged / name).read_text())
            (damaged / name).write_text(json.dumps({**index, "vae": []}))
        else:
            (damaged / name).write_text(text)
        with pytest.raises(ArtifactError, match=message):
            check_export(damaged)
    missing_code = tmp_path / "missing-code"
    shutil.copytree(out, missing_code)
    (missing_code / "pipeline_twostep.py").unlink()
    with pytest.raises(ArtifactError, match="pipeline_twostep.py: the pipeline's code file is "
                                            "missing"):
        check_export(missing_code)
    truncated = tmp_path / "truncated"
    shutil.copytree(out, truncated)
    weights = next((truncated / "text_encoder").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="cannot load the exported pipeline"):
        load_exported(truncated)


def _plain_teacher_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "ZImagePipeline"}')
    return folder


BLOCK_TWOSTEP = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pipeline", "stages", "flows", "schemas"):
            raise ImportError(f"twostep is not importable here ({name})")
sys.meta_path.insert(0, Block())
"""


def test_zimage_export_loads_without_twostep_and_matches_the_student(zimage_folder, tmp_path):
    teacher = load_teacher("zimage", str(zimage_folder))
    student = _perturb(TwoStepStudent.from_teacher(teacher.transformer, "decoupled", 0.75))
    out = tmp_path / "pipeline"
    shape = teacher.latent_shape(64, 64)
    sigma_mid = 0.75
    write_pipeline(student, teacher, out, dtype=torch.float32, max_shard_size="5GB",
                   height=64, width=64, info=INFO)
    # the second prompt is longer than the miniature's rope table holds (axes_lens[0] 64:
    # 32 caption tokens): pipeline and adapter truncate it alike instead of failing
    prompts = [PROMPTS[0], " ".join(["a big blue square at the top"] * 20)]
    caps = teacher.encode_prompts(prompts)
    assert len(caps[1]) == 32
    noise = noise_for_seeds([7, 8], shape)
    expected = student.sample(noise, caps)
    script = BLOCK_TWOSTEP + f"""
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)
gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
latents = pipe({prompts!r}, generator=gens, output_type="latent").images
assert "pipeline" not in sys.modules
try:  # past the miniature's position tables (16 tokens a side, 4 px each): one clear error
    pipe("x", height=128, width=64)
    raise SystemExit("128 px was not refused")
except ValueError as exc:
    assert "at most 64x64 px" in str(exc), exc
from safetensors.torch import save_file
save_file({{"latents": latents.contiguous()}}, {str(tmp_path / 'latents.safetensors')!r})
print(type(pipe).__name__, pipe.config.boundary_sigma)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["TwoStepPipeline", str(sigma_mid)]
    from safetensors.torch import load_file

    latents = load_file(str(tmp_path / "latents.safetensors"))["latents"]
    torch.testing.assert_close(latents, expected, atol=1e-5, rtol=0)


def test_the_exports_minilm_encoding_is_the_toy_teachers(toy_export):
    # The export's code file may not import twostep, so it encodes MiniLM itself: pin it to
    # the teacher's encoder, truncation of a long prompt and padding removal included.
    teacher, _, out = toy_export
    long = " ".join(["a big red circle on the left of a small blue square"] * 12)
    prompts = [long, "a shape", PROMPTS[0]]
    pipe = load_exported(out)
    ours, _ = pipe.encode_prompt(prompts)
    theirs = teacher.encode_prompts(prompts)
    assert [len(c) for c in ours] == [len(c) for c in theirs] and len(ours[0]) == 64
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_lora_student_round_trips_through_its_weights_file_into_two_merged_transformers(
        tmp_path):
    from safetensors.torch import save_file

    from pipeline.student.checkpoint import student_tensors
    from pipeline.student.load import load_student
    from schemas.config import LoraConfig
    from schemas.manifest import StudentCheckpointManifest

    teacher = load_teacher("toy")
    lora = LoraConfig(rank=4)
    torch.manual_seed(0)
    student = TwoStepStudent.from_teacher(teacher.transformer, "decoupled_lora", 0.75, lora=lora)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in student.trainable().values():
            p.add_(torch.randn(p.shape, generator=gen) * 2e-2)
    tensors = student_tensors(student)
    assert tensors and all(".lora_" in k for k in tensors)  # the file holds adapters only
    save_file(tensors, str(tmp_path / "ema.safetensors"))
    manifest = StudentCheckpointManifest.model_construct(
        stage="train_e2e", parameterization="decoupled_lora", sigma_mid=0.75,
        lora=lora.model_dump(mode="json"))
    loaded = load_student(tmp_path, manifest, teacher, "ema")
    assert loaded.g2 is not None and loaded.parameterization == "decoupled_lora"
    out = tmp_path / "pipeline"
    write_pipeline(loaded, teacher, out, dtype=torch.float32, max_shard_size="5GB",
                   height=32, width=32, info=INFO, card="# card\n")
    pipe = load_exported(out)
    caps = teacher.encode_prompts(PROMPTS)
    noise = noise_for_seeds([5, 6], teacher.latent_shape(32, 32))
    expected = student.eval().sample(noise, caps)
    latents = pipe(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
                   output_type="latent").images
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0)
