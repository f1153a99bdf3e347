"""EMA centres of the teacher outputs (docs/method.md §5): one for [CLS], one for particle tokens."""

from __future__ import annotations

import torch

from jbot.comm import SINGLE, Comm


class Centers(torch.nn.Module):
    cls: torch.Tensor
    part: torch.Tensor

    def __init__(self, d_proj: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("cls", torch.zeros(d_proj))
        self.register_buffer("part", torch.zeros(d_proj))

    @torch.no_grad()
    def update(self, t_cls: torch.Tensor, t_part: torch.Tensor, valid: torch.Tensor | None,
               comm: Comm = SINGLE) -> None:
        """c <- m c + (1 - m) mean, from un-centred teacher outputs of both views: ``t_cls`` (N, K), ``t_part``
        (N, P, K) averaged over valid particle tokens (``valid`` (N, P)), or (M, K) the valid tokens alone
        (``valid`` None); means over all ranks."""
        m = self.momentum
        cls_sum = comm.sum(t_cls.float().sum(0))
        self.cls.mul_(m).add_(cls_sum / (t_cls.shape[0] * comm.world), alpha=1 - m)
        if valid is None:
            part_sum = t_part.float().sum(0)
            count = torch.full((), float(t_part.shape[0]), device=t_part.device)
        else:
            w = valid.to(torch.float32)[..., None]
            part_sum, count = (t_part.float() * w).sum((0, 1)), w.sum()
        self.part.mul_(m).add_(comm.sum(part_sum) / comm.sum(count).clamp_min(1.0), alpha=1 - m)
