"""Loss terms against golden numbers computed once from the formulas of docs/method.md §5 (float64 NumPy) and stored."""

from __future__ import annotations

import math

import pytest
import torch

from jbot.ssl.center import Centers
from jbot.ssl.losses import cls_loss, koleo, part_loss_view
from jbot.ssl.schedules import lr_schedule, momentum_schedule
from jbot.ssl.teacher import ema_update, make_teacher

GOLDEN_CLS = 6.756070539009066
GOLDEN_PART_JET = 8.821674658141276
GOLDEN_PART_BATCH = 9.064521737972875
GOLDEN_KOLEO = 0.11737030101886377


def _inputs():
    B, P, K = 3, 4, 5
    a = torch.arange(B * K, dtype=torch.float64)
    t_u, t_v = torch.sin(a).reshape(B, K), torch.cos(1.3 * a).reshape(B, K)
    s_u, s_v = torch.sin(0.7 * a + 1).reshape(B, K), torch.cos(0.4 * a - 2).reshape(B, K)
    c = torch.linspace(-0.2, 0.3, K, dtype=torch.float64)
    b = torch.arange(B * P * K, dtype=torch.float64)
    tp, sp = torch.sin(0.37 * b).reshape(B, P, K), torch.cos(0.53 * b + 0.5).reshape(B, P, K)
    masked = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    cp = torch.linspace(0.1, -0.1, K, dtype=torch.float64)
    return t_u, t_v, s_u, s_v, c, tp, sp, masked, cp


def test_golden_cls_and_part() -> None:
    t_u, t_v, s_u, s_v, c, tp, sp, masked, cp = _inputs()
    assert cls_loss((t_u, t_v), (s_u, s_v), c, 0.04, 0.1).item() == pytest.approx(GOLDEN_CLS, rel=1e-12)
    # jet 1 has no masked particle and contributes nothing
    assert part_loss_view(tp, sp, masked, cp, 0.04, 0.1, "jet").item() == pytest.approx(GOLDEN_PART_JET, rel=1e-12)
    assert part_loss_view(tp, sp, masked, cp, 0.04, 0.1, "batch").item() == pytest.approx(GOLDEN_PART_BATCH,
                                                                                          rel=1e-12)


def test_golden_koleo() -> None:
    x = torch.stack([torch.sin(torch.arange(6, dtype=torch.float64) * 0.9 + k) for k in range(5)])
    assert koleo(x).item() == pytest.approx(GOLDEN_KOLEO, rel=1e-9)


def test_no_masked_particle_gives_zero_part_loss() -> None:
    _, _, _, _, _, tp, sp, masked, cp = _inputs()
    assert part_loss_view(tp, sp, torch.zeros_like(masked), cp, 0.04, 0.1).item() == 0.0


def test_teacher_gets_no_gradient_and_follows_ema() -> None:
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 3)
    (teacher(x).sum() + student(x).sum()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_centres_follow_their_update() -> None:
    centers = Centers(3, momentum=0.9)
    t_cls = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    t_part = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3)
    valid = torch.tensor([[True, False], [True, True]])
    centers.update(t_cls, t_part, valid)
    torch.testing.assert_close(centers.cls, 0.1 * torch.tensor([2.0, 2.0, 2.0]))
    expected_part = (t_part[0, 0] + t_part[1, 0] + t_part[1, 1]) / 3
    torch.testing.assert_close(centers.part, 0.1 * expected_part)
    centers.update(t_cls, t_part, valid)
    torch.testing.assert_close(centers.cls, (0.9 * 0.1 + 0.1) * torch.tensor([2.0, 2.0, 2.0]))


def test_schedules() -> None:
    lr = lr_schedule(2e-3, total_steps=100, warmup_steps=10)
    assert lr[0] == pytest.approx(2e-4) and lr[9] == pytest.approx(2e-3) and lr[-1] == pytest.approx(2e-3)
    cos = lr_schedule(2e-3, 100, 10, "cosine", min_lr=1e-6)
    assert cos[10] == pytest.approx(2e-3) and cos[-1] < 1e-4 and all(cos[10:][1:] <= cos[10:][:-1])
    m = momentum_schedule(0.996, 1.0, 50)
    assert m[0] == pytest.approx(0.996) and m[-1] == pytest.approx(1.0)
    assert m[25] == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi * 25 / 49)))
