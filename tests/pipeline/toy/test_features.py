from __future__ import annotations

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.toy.features import (
    ASSET_DIR,
    FEATURE_DIM,
    HEADS,
    ToyFeatureNet,
    degrade,
    degraded_set,
    load_feature_net,
    render_set,
    save_feature_net,
)


def test_shapes_and_roundtrip(tmp_path):
    model = ToyFeatureNet().eval()
    data = render_set(8, seed=0)
    features, logits = model(data.images)
    assert features.shape == (8, FEATURE_DIM)
    assert {k: v.shape[1] for k, v in logits.items()} == {k: len(v) for k, v in HEADS.items()}
    save_feature_net(model, {"note": "test"}, tmp_path)
    loaded = load_feature_net(tmp_path)
    assert torch.equal(loaded(data.images)[0], model(data.images)[0])


def test_missing_or_foreign_weights_are_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="build them with `distill toy build-features`"):
        load_feature_net(tmp_path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ArtifactError, match="not a toy feature network checkpoint"):
        load_feature_net(tmp_path)


def test_degrade_blurs_and_noises_per_image():
    data = render_set(4, seed=3)
    zeros = torch.zeros(4)
    assert torch.equal(degrade(data.images, zeros, zeros), data.images)
    blurred = degrade(data.images, torch.tensor([0.0, 1.0, 2.0, 0.0]), zeros)
    assert torch.equal(blurred[0], data.images[0]) and torch.equal(blurred[3], data.images[3])
    assert not torch.equal(blurred[1], data.images[1])

    def edges(x):  # total variation: falls as the blur widens
        return float((x[..., 1:] - x[..., :-1]).abs().sum())

    image = data.images[2:3].expand(3, -1, -1, -1)
    levels = degrade(image, torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3))
    assert edges(levels[0]) > edges(levels[1]) > edges(levels[2])
    # a blur keeps flat colour: a uniform image is unchanged
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(degrade(flat, torch.tensor([1.5]), torch.zeros(1)), flat)
    mid = torch.zeros(2, 3, 32, 32)  # mid-gray: clamping cannot hide the noise
    noisy = degrade(mid, torch.zeros(2), torch.tensor([0.0, 0.1]),
                    torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], mid[0])
    assert float(noisy[1].std()) == pytest.approx(0.1, rel=0.05)


@pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").exists(), reason="not built yet")
def test_shipped_network_reads_renders_also_blurred_or_noisy():
    model = load_feature_net()
    data = render_set(500, seed=12345)  # renders it never saw
    sets = {"clean": data, "blur_1px": degraded_set(data, 1.0, 0.0, seed=1),
            "noise_0.1": degraded_set(data, 0.0, 0.1, seed=1)}
    for condition, images in sets.items():
        predicted = model.predict(images.images)
        for name, values in HEADS.items():
            truth = [values[i] for i in data.labels[name].tolist()]
            acc = sum(getattr(p, name) == t for p, t in zip(predicted, truth,
                                                            strict=True)) / 500
            assert acc >= 0.98, (condition, name, acc)
