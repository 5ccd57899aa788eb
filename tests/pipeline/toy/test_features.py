from __future__ import annotations

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.toy.features import (
    ASSET_DIR,
    FEATURE_DIM,
    HEADS,
    ToyFeatureNet,
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


@pytest.mark.skipif(not (ASSET_DIR / "model.safetensors").exists(), reason="not built yet")
def test_shipped_network_reads_renders():
    model = load_feature_net()
    data = render_set(500, seed=12345)  # renders it never saw
    predicted = model.predict(data.images)
    for name, values in HEADS.items():
        truth = [values[i] for i in data.labels[name].tolist()]
        acc = sum(getattr(p, name) == t for p, t in zip(predicted, truth, strict=True)) / 500
        assert acc >= 0.98, (name, acc)
