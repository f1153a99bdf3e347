"""The EMA teacher (docs/method.md §5): same architecture and initial weights as the student, never trained directly."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def make_teacher(student: M) -> M:
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float | torch.Tensor) -> None:
    """theta_t <- tau theta_t + (1 - tau) theta_s, after every optimizer step. ``momentum`` may be a tensor on
    the device (read there, never on the host: a CUDA graph replays it)."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
    if isinstance(momentum, torch.Tensor):
        weight = 1.0 - momentum
        torch._foreach_lerp_(t_params, s_params, [weight] * len(t_params))
    else:
        torch._foreach_lerp_(t_params, s_params, 1.0 - float(momentum))
