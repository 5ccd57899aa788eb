from __future__ import annotations

import json

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.toy.autoencoder import (
    AutoencoderConfig,
    AutoencoderTrainConfig,
    ToyAutoencoder,
    layout_target,
    refine_decoder,
    train_autoencoder,
)
from pipeline.toy.features import HEADS, render_set


def test_layout_target_puts_the_coverage_in_the_channel_of_the_shape():
    data = render_set(12, seed=3)
    labels = data.labels
    target = layout_target(data.images, labels["color"], labels["background"],
                           labels["shape"], grid=8)
    assert target.shape == (12, 3, 8, 8)
    mass = target.sum(dim=(2, 3))
    assert torch.equal(mass.argmax(dim=1), labels["shape"])
    others = mass.clone()
    others[torch.arange(12), labels["shape"]] = 0
    assert others.abs().max() == 0 and target.min() >= 0 and target.max() <= 2.0 + 1e-5
    # a large shape covers more of the grid than a small one
    large = labels["size"] == HEADS["size"].index("large")
    if large.any() and (~large).any():
        assert mass.max(dim=1).values[large].mean() > mass.max(dim=1).values[~large].mean()


def test_training_save_and_load_round_trip(tmp_path):
    config = AutoencoderConfig(grid=8, channels=4, width=8)
    model, info = train_autoencoder(
        config, AutoencoderTrainConfig(samples=64, epochs=1, batch=32, eval_renders=16,
                                       decoder_epochs=1), log=lambda _: None)
    for phase in ("phase_1", "phase_2"):
        assert 0 <= info[phase]["layout_channels_name_shape"] <= 1
        assert set(info[phase]["reconstruction_accuracy"]) == set(HEADS)
    images = render_set(4, seed=5).images
    encoder_weights = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    refine_decoder(model, AutoencoderTrainConfig(samples=32, batch=16, eval_renders=8,
                                                 decoder_epochs=1), log=lambda _: None)
    for name, tensor in model.encoder.state_dict().items():  # phase 2 leaves the latent alone
        assert torch.equal(tensor, encoder_weights[name]), name
    latents = model.fit_latent_statistics(images)
    torch.testing.assert_close(model.encode(images), latents)
    assert latents.shape == (4, 4, 8, 8) == (4, *model.latent_shape)
    # normalised with the statistics of these very images
    assert latents.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    model.save(tmp_path / "ae")
    loaded = ToyAutoencoder.load(tmp_path / "ae")
    assert loaded.config == config
    torch.testing.assert_close(loaded.encode(images), latents)
    decoded = loaded.decode(latents)
    assert decoded.shape == (4, 3, 32, 32) and decoded.abs().max() <= 1


def test_bad_autoencoder_folders_get_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="config.json: missing"):
        ToyAutoencoder.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="config.json: not a toy autoencoder config"):
        ToyAutoencoder.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"grid": 5}))
    with pytest.raises(ArtifactError, match="grid 5"):
        ToyAutoencoder.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"grid": 8, "depth": 2}))
    with pytest.raises(ArtifactError, match=r"config \(depth: unknown field \(got 2\)\)$"):
        ToyAutoencoder.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"grid": 8, "channels": 4, "width": 8}))
    with pytest.raises(ArtifactError, match="model.safetensors: missing"):
        ToyAutoencoder.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        ToyAutoencoder.load(tmp_path)
    ToyAutoencoder(AutoencoderConfig(channels=6, width=8)).save(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"grid": 8, "channels": 4, "width": 8}))
    with pytest.raises(ArtifactError, match="does not match"):
        ToyAutoencoder.load(tmp_path)
