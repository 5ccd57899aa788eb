from __future__ import annotations

import copy

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from pipeline.toy.teacher import (
    TeacherTrainConfig,
    sample,
    save_teacher,
    shifted_sigmas,
    train_teacher,
)


def test_teacher_schedule_matches_the_design():
    assert shifted_sigmas(8) == pytest.approx(
        [1, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0], abs=1e-4)
    assert shifted_sigmas(2) == pytest.approx([1, 0.75, 0])


def test_short_training_run_saves_a_loadable_diffusers_folder(tmp_path):
    cfg = TeacherTrainConfig(minutes=10, max_steps=3, pool_prompts=50, pool_images=64,
                             batch=8, warmup=1)
    model, info = train_teacher(cfg, log=lambda _: None)
    assert info["steps"] == 3 and info["final_loss"] > 0
    save_teacher(model, info, tmp_path)
    loaded = ZImageTransformer2DModel.from_pretrained(tmp_path / "transformer",
                                                      torch_dtype=torch.float32)
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    rounded = copy.deepcopy(model).half().float()  # weights are stored as fp16
    caps = [torch.randn(7, 384)] * 2
    noise = torch.randn(2, 3, 32, 32)
    assert torch.allclose(sample(rounded, caps, noise, 2), sample(loaded, caps, noise, 2),
                          atol=1e-5)
