"""The EMA teacher (SPEC §5): same architecture and initial weights as the student, never trained directly."""

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
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- tau theta_t + (1 - tau) theta_s, after every optimizer step."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t_params, s_params, 1.0 - float(momentum))
