"""decoupled_lora: one frozen base with an adapter per step; gradients reach both adapters in a
chained graph (also under gradient checkpointing, where PEFT's switching alone trains the wrong
adapter); fused copies equal the adapted model; bad adapter settings are one line."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import CheckpointError

from pipeline.flow import transformer_velocity
from pipeline.student.lora import check_lora
from pipeline.student.model import TwoStepStudent
from schemas.config import LoraConfig

LORA = LoraConfig(rank=4, alpha=8.0)


def _lora_student(transformer, seed=5) -> TwoStepStudent:
    torch.manual_seed(seed)  # PEFT draws A from the global generator
    student = TwoStepStudent.from_teacher(transformer, "decoupled_lora", 0.75, lora=LORA)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B = 0 at init; non-zero B so that A gets gradients too
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return student


def _grads(student, captions, noise) -> dict[str, torch.Tensor]:
    x_mid, x0 = student(noise, captions)
    with student.base_only() as base:  # the discriminator's pass: adapters off
        v = transformer_velocity(base, x0, torch.full((noise.shape[0],), 0.5), captions)
    (x0.pow(2).mean() + x_mid.pow(2).mean() + v.pow(2).mean()).backward()
    return {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


def test_at_init_it_is_the_teacher_and_only_adapters_train(tiny_transformer, captions):
    student = TwoStepStudent.from_teacher(tiny_transformer, "decoupled_lora", 0.75, lora=LORA)
    reference = TwoStepStudent.from_teacher(tiny_transformer, "decoupled", 0.75)
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(student.sample(noise, captions),
                               reference.sample(noise, captions))
    trainable = student.trainable()
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".lora_")[1].split(".")[1] for n in trainable} == {"step1", "step2"}
    n_base = sum(p.numel() for p in tiny_transformer.parameters())
    assert sum(p.numel() for p in student.parameters()) - student.adapters.trainable_count() \
        == n_base  # one base model, not two


def test_one_chained_graph_trains_both_adapters_also_when_checkpointed(tiny_transformer,
                                                                       captions):
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    plain = _grads(_lora_student(tiny_transformer), captions, noise)
    adapters = {n for n in plain if ".lora_" in n}
    assert adapters == set(_lora_student(tiny_transformer).trainable())
    assert all(plain[n].abs().sum() > 0 for n in adapters)
    checkpointed = _lora_student(tiny_transformer).train()
    checkpointed.enable_gradient_checkpointing()
    again = _grads(checkpointed, captions, noise)
    assert set(again) == set(plain)
    for name in plain:
        torch.testing.assert_close(again[name], plain[name], atol=1e-6, rtol=1e-5)
    # The trap: diffusers' default checkpointing recomputes each block under the adapter
    # active at backward time: a recomputation that does not match (torch notices here) or,
    # with the same shapes, wrong gradients.
    naive = _lora_student(tiny_transformer).train()
    naive.g1.enable_gradient_checkpointing()
    with pytest.raises(CheckpointError, match="different metadata"):
        _grads(naive, captions, noise)


def test_the_fused_student_equals_the_adapted_one(tiny_transformer, captions):
    student = _lora_student(tiny_transformer)
    merged = student.merged()
    assert merged.parameterization == "decoupled_lora" and merged.adapters is None
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(merged.sample(noise, captions), student.sample(noise, captions),
                               atol=1e-5, rtol=1e-4)


def test_bad_adapter_settings_are_one_line(tiny_transformer):
    with pytest.raises(ValueError, match=r"match no linear layer .* layers: .*attention.to_q"):
        check_lora(tiny_transformer, LoraConfig(target_modules=["to_qq"]))
    with pytest.raises(ValueError, match=r"\['nope'\] match no linear layer"):
        check_lora(tiny_transformer, LoraConfig(target_modules=["to_q", "nope"]))
    with pytest.raises(ValueError, match=r"rank 4096 is larger than layer .* at most \d+"):
        check_lora(tiny_transformer, LoraConfig(rank=4096))
