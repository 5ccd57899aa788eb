"""Real-domain metric plugins with networks built locally: FID/KID on the FID Inception
(random weights in the published layout), CLIP score on a tiny random CLIPModel."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ArtifactError
from pipeline.evaluation.inception import (
    FIDInceptionV3,
    convert_fid_weights,
    load_fid_inception,
)
from pipeline.evaluation.metrics import frechet_distance, groups_of
from pipeline.evaluation.real import (
    FIDKID,
    CLIPScore,
    check_paths,
    kernel_inception_distance,
    real_metric_plugins,
)
from schemas.config import CLIPScoreConfig, FIDConfig, RealMetricsConfig
from tests.metric_miniatures import build_fid_weights, build_tiny_clip, fid_state_dict


def _kid_by_definition(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, written out pair by pair."""
    d = x.shape[1]

    def k(a, b):
        return float((a.double() @ b.double() / d + 1) ** 3)

    m = len(x)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_its_definition_and_separates_distributions():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen) + 0.5
    kid, std = kernel_inception_distance(x, y, subsets=1, subset_size=7)
    assert kid == pytest.approx(_kid_by_definition(x, y), rel=1e-9)
    assert std == 0.0
    a, b = torch.randn(400, 8, generator=gen), torch.randn(400, 8, generator=gen)
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 < shifted
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(x[:1], y)


def test_fid_inception_has_the_published_architecture():
    # torchvision's InceptionV3 (27,161,264 parameters) without the auxiliary head
    # (3,326,696) and the 1000-class classifier (2,049,000).
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 21_785_568
    keys = set(FIDInceptionV3().state_dict())
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var",
            "Mixed_7c.branch3x3dbl_3b.conv.weight"} <= keys


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory) -> Path:
    return build_fid_weights(tmp_path_factory.mktemp("fid") / "inception.safetensors")


def test_convert_reads_a_published_style_checkpoint_without_pickled_code(tmp_path):
    state = fid_state_dict(seed=1)
    source = tmp_path / "pt_inception.pth"
    torch.save(state, source)
    target = tmp_path / "out" / "inception.safetensors"
    assert convert_fid_weights(source, target) == len(
        [k for k in state if not k.startswith("fc.") and "num_batches" not in k])
    model = load_fid_inception(target)
    reference = FIDInceptionV3()
    reference.load_state_dict(state, strict=False)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images), reference.eval()(images))
    assert not list(tmp_path.glob("out/.tmp-*"))

    # A checkpoint that would run code on unpickling is refused, and nothing is written.
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weights": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ArtifactError, match="evil.pth: cannot read as a weights-only"):
        convert_fid_weights(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    # Some other network's weights: named, nothing written.
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match=r"other.pth: not FID Inception weights "
                                            r"\(Conv2d_1a_3x3.conv.weight is missing\)"):
        convert_fid_weights(tmp_path / "other.pth", tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_load_errors_name_the_file(tmp_path, fid_weights):
    with pytest.raises(ArtifactError, match="nope.safetensors: FID Inception weights not found"):
        load_fid_inception(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="junk.safetensors: not a safetensors file"):
        load_fid_inception(tmp_path / "junk.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(fid_weights)
    state["Mixed_6b.branch1x1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ArtifactError, match=r"Mixed_6b.branch1x1.conv.weight has shape "
                                            r"\(1, 1, 1, 1\)"):
        load_fid_inception(tmp_path / "bad.safetensors")


def test_fid_kid_plugin_scores_against_teacher_and_reference_folder(tmp_path, fid_weights):
    gen = torch.Generator().manual_seed(0)
    teacher = torch.rand(6, 3, 32, 32, generator=gen)
    near = (teacher + 0.02 * torch.randn(teacher.shape, generator=gen)).clamp(0, 1)
    far = torch.zeros_like(teacher) + torch.rand(6, 3, 1, 1, generator=gen)  # flat colours
    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(teacher):
        array = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}.png")
    plugin = FIDKID(FIDConfig(weights=str(fid_weights), reference_dir=str(folder),
                              kid_subsets=5, batch_size=4))
    plugin.prepare(teacher)
    prompts = ["a shape", "a shape", "a disc", "a disc", "a star", "a star"]  # 2 seeds each
    groups = groups_of(prompts)
    own = plugin.score(teacher, prompts, groups)
    assert set(own) == {"fid_teacher", "fid_teacher_unpaired", "kid_teacher", "fid_data",
                        "kid_data"}
    assert own["fid_teacher"] == pytest.approx(0.0, abs=1e-2)
    # the teacher's own floor: FD between its first and second seeds, both ways
    feats = plugin.features(teacher)
    assert own["fid_teacher_unpaired"] == pytest.approx(
        frechet_distance(feats[[0, 2, 4]], feats[[1, 3, 5]]), rel=1e-3)
    scores = {name: plugin.score(x, prompts, groups) for name, x in (("near", near),
                                                                     ("far", far))}
    # The PNGs are the teacher images rounded to 8 bits: closer than 2% noise.
    assert own["fid_data"] < scores["near"]["fid_teacher"]
    assert 0 < scores["near"]["fid_teacher"] < scores["far"]["fid_teacher"]
    assert scores["near"]["kid_teacher"] < scores["far"]["kid_teacher"]
    assert scores["far"]["fid_teacher_unpaired"] > own["fid_teacher_unpaired"]
    # One seed per prompt: nothing to pair across seeds, no unpaired FID.
    assert "fid_teacher_unpaired" not in plugin.score(near, [f"p{i}" for i in range(6)],
                                                      list(range(6)))


def test_reference_folder_problems_are_named(tmp_path, fid_weights):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="empty: no PNG/JPEG/WebP images"):
        FIDKID(FIDConfig(weights=str(fid_weights), reference_dir=str(tmp_path / "empty")))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (8, 8)).save(mixed / "a.png")
    Image.new("RGB", (9, 8)).save(mixed / "b.png")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ArtifactError, match=r"b.png: size \(8, 9\) differs"):
        FIDKID(FIDConfig(weights=str(fid_weights), reference_dir=str(mixed)))
    with pytest.raises(ArtifactError, match="x.png: cannot read image"):
        FIDKID(FIDConfig(weights=str(fid_weights), reference_dir=str(tmp_path / "broken")))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_clip_score_is_the_cosine_of_clip_embeddings(clip_folder):
    from transformers import AutoTokenizer, CLIPModel

    plugin = CLIPScore(CLIPScoreConfig(path=str(clip_folder), batch_size=2))
    images = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "a photo of a cat", "a blue square on the left"]
    value = plugin.score(images, prompts, [0, 1, 2])["clip_score"]
    # The same computation written directly against transformers.
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_folder)
    resized = torch.nn.functional.interpolate(images, size=(32, 43), mode="bicubic",
                                              align_corners=False).clamp(0, 1)[..., 5:37]
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=(resized - mean) / std)
        txt = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert value == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-3)
    # Scores follow the prompt: a different prompt set gives a different score.
    other = plugin.score(images, ["the cat", "green triangle", "an unknown word"],
                         [0, 1, 2])["clip_score"]
    assert other != value
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        plugin.score(images, prompts[:2], [0, 1])


def test_missing_paths_are_config_errors_naming_the_field(tmp_path, clip_folder,
                                                           fid_weights):
    cfg = RealMetricsConfig(fid=FIDConfig(weights=str(tmp_path / "none.safetensors"),
                                          reference_dir=str(tmp_path / "nodir")),
                            clip=CLIPScoreConfig(path=str(tmp_path)))
    problems = check_paths(cfg)
    assert problems == [
        f"evaluate.real_metrics.fid.weights: file not found: {tmp_path / 'none.safetensors'}",
        f"evaluate.real_metrics.fid.reference_dir: folder not found: {tmp_path / 'nodir'}",
        f"evaluate.real_metrics.clip.path: not a CLIP model folder (no config.json): "
        f"{tmp_path}",
    ]
    assert check_paths(RealMetricsConfig()) == []
    assert list(real_metric_plugins(RealMetricsConfig())) == []
    # what the plugins would fail on only after every generator's images are made
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "inception.pth")  # not converted
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    problems = [check_paths(RealMetricsConfig(fid=FIDConfig(weights=str(tmp_path / name))))[0]
                for name in ("inception.pth", "other.safetensors")]
    assert problems[0].startswith("evaluate.real_metrics.fid.weights: ") and \
        "inception.pth: not a safetensors file" in problems[0]
    assert problems[1].endswith("other.safetensors: not FID Inception weights "
                                "(Conv2d_1a_3x3.conv.weight is missing)")
    assert check_paths(RealMetricsConfig(
        fid=FIDConfig(weights=str(fid_weights), reference_dir=str(tmp_path / "empty")),
        clip=CLIPScoreConfig(path=str(tmp_path / "no-weights")))) == [
        f"evaluate.real_metrics.fid.reference_dir: no PNG/JPEG/WebP images in "
        f"{tmp_path / 'empty'}; FID and KID need 2 or more",
        f"evaluate.real_metrics.clip.path: no safetensors weights in {tmp_path / 'no-weights'} "
        f"(save with CLIPModel.save_pretrained, safe_serialization)"]
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "one.png")  # one image: no covariance
    assert check_paths(RealMetricsConfig(fid=FIDConfig(
        weights=str(fid_weights), reference_dir=str(tmp_path / "empty")))) == [
        f"evaluate.real_metrics.fid.reference_dir: 1 PNG/JPEG/WebP image in "
        f"{tmp_path / 'empty'}; FID and KID need 2 or more"]
    assert check_paths(RealMetricsConfig(fid=FIDConfig(weights=str(fid_weights)),
                                         clip=CLIPScoreConfig(path=str(clip_folder)))) == []
    with pytest.raises(ArtifactError, match="not a CLIP model folder"):
        CLIPScore(CLIPScoreConfig(path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="cannot load the CLIP model"):
        CLIPScore(CLIPScoreConfig(path=str(tmp_path)))
    plugins = list(real_metric_plugins(RealMetricsConfig(
        clip=CLIPScoreConfig(path=str(clip_folder)))))
    assert [p.name for p in plugins] == ["clip"]
