"""EMA centres of the teacher outputs (SPEC §5): one for [CLS], one for particle tokens."""

from __future__ import annotations

import torch


class Centers(torch.nn.Module):
    cls: torch.Tensor
    part: torch.Tensor

    def __init__(self, d_proj: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("cls", torch.zeros(d_proj))
        self.register_buffer("part", torch.zeros(d_proj))

    @torch.no_grad()
    def update(self, t_cls: torch.Tensor, t_part: torch.Tensor, valid: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean, from un-centred teacher outputs of both views: ``t_cls`` (N, K),
        ``t_part`` (N, P, K) averaged over valid particle tokens (``valid`` (N, P))."""
        m = self.momentum
        self.cls.mul_(m).add_(t_cls.float().mean(0), alpha=1 - m)
        w = valid.to(torch.float32)[..., None]
        part_mean = (t_part.float() * w).sum((0, 1)) / w.sum().clamp_min(1.0)
        self.part.mul_(m).add_(part_mean, alpha=1 - m)
