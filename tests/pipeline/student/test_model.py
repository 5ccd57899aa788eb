"""The two-step student: at initialization it is exactly the teacher's naive 2-step Euler."""

from __future__ import annotations

import torch

from pipeline.flow import noised, transformer_velocity
from pipeline.student.model import TwoStepStudent


def test_student_at_init_is_the_teachers_two_euler_steps(tiny_transformer, captions):
    student = TwoStepStudent.from_teacher(tiny_transformer, "decoupled", 0.75)
    noise = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = noise
    for a, b in ((1.0, 0.75), (0.75, 0.0)):
        x = x + (b - a) * transformer_velocity(tiny_transformer, x, torch.full((3,), a),
                                               captions)
    torch.testing.assert_close(student.sample(noise, captions), x, atol=1e-5, rtol=0)


def test_decoupled_has_two_copies_shared_has_one(tiny_transformer):
    n = sum(p.numel() for p in tiny_transformer.parameters())
    decoupled = TwoStepStudent.from_teacher(tiny_transformer, "decoupled", 0.75)
    shared = TwoStepStudent.from_teacher(tiny_transformer, "shared", 0.75)
    assert sum(p.numel() for p in decoupled.parameters()) == 2 * n
    assert sum(p.numel() for p in shared.parameters()) == n
    assert len(decoupled.transformers()) == 2 and len(shared.transformers()) == 1
    assert {decoupled.file_key(n)[:3] for n in decoupled.trainable()} == {"g1.", "g2."}
    assert {shared.file_key(n)[:2] for n in shared.trainable()} == {"g."}
    # copies: training the student never touches the teacher
    assert all(p.data_ptr() != q.data_ptr() for p, q in
               zip(decoupled.g1.parameters(), tiny_transformer.parameters(), strict=True))


def test_gradients_reach_g1_only_end_to_end(tiny_transformer, captions):
    noise = torch.randn(3, 3, 32, 32)
    for detach, reaches in ((False, True), (True, False)):
        student = TwoStepStudent.from_teacher(tiny_transformer, "decoupled", 0.75)
        _, x0 = student(noise, captions, detach_mid=detach)
        x0.pow(2).mean().backward()
        g1_grad = any(p.grad is not None and p.grad.abs().sum() > 0
                      for p in student.g1.parameters())
        assert g1_grad is reaches
        assert any(p.grad is not None for p in student.g2.parameters())


def test_phase1_inputs_use_the_teachers_x_mid(tiny_transformer, captions):
    student = TwoStepStudent.from_teacher(tiny_transformer, "decoupled", 0.75)
    noise, x_mid_t = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    _, x0 = student(noise, captions, x_mid_in=x_mid_t)
    torch.testing.assert_close(x0, student.step2(x_mid_t, captions))


def test_noised_interpolates():
    x0, eps = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    out = noised(x0, eps, torch.tensor([0.0, 0.25]))
    assert out[0].sum() == 0 and torch.allclose(out[1], torch.full((1, 2, 2), 0.25))
