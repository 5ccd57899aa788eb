"""Pickle-free checkpoints: an optimizer restored from safetensors + JSON continues exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import ArtifactError
from pipeline.student import checkpoint as ckpt


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2), torch.Generator()


def _step(model, opt, gen):
    x = torch.randn(16, 4, generator=gen)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_resume_from_checkpoint_continues_identically(tmp_path):
    model, opt, gen = _setup()
    gen.manual_seed(3)
    for _ in range(3):
        _step(model, opt, gen)
    ckpt.save_checkpoint(tmp_path, 3, {"m": model}, {"m": (model, opt)}, {"g": gen},
                         {"extra": 1})
    expected = [_step(model, opt, gen) for _ in range(3)]

    model2, opt2, gen2 = _setup(seed=99)
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step-0000003"
    state = ckpt.load_checkpoint(latest, {"m": model2}, {"m": (model2, opt2)}, {"g": gen2})
    assert state == {"step": 3, "extra": 1}
    assert [_step(model2, opt2, gen2) for _ in range(3)] == expected


def test_only_the_newest_checkpoint_is_kept_and_temporaries_are_not_checkpoints(tmp_path):
    model, opt, gen = _setup()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, {"m": model}, {"m": (model, opt)}, {"g": gen}, {})
    (tmp_path / "checkpoints" / "step-0000009.tmp").mkdir()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000003", "step-0000009.tmp"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000003"


def test_weights_of_another_architecture_are_named(tmp_path):
    model, _, _ = _setup()
    wrong = {k: torch.zeros(3) for k in model.state_dict()}
    save_file(wrong, str(tmp_path / "w.safetensors"))
    with pytest.raises(ArtifactError, match=r"has shape \(3,\), the model expects"):
        ckpt.set_trainable(model, ckpt.load_weights(tmp_path / "w.safetensors"), "w")
    save_file({"other": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ArtifactError, match="missing"):
        ckpt.set_trainable(model, ckpt.load_weights(tmp_path / "x.safetensors"), "x")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        ckpt.load_weights(tmp_path / "junk.safetensors")


def test_gathered_weights_are_a_copy_not_the_live_parameters():
    model, _, _ = _setup()
    gathered = ckpt.gather_trainable(model)
    before = {k: v.clone() for k, v in gathered.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # e.g. the EMA swapped back in after a gather
    assert all(torch.equal(gathered[k], before[k]) for k in before)
