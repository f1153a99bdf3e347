"""Self-distillation losses (docs/method.md §5)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def cross_entropy(teacher: torch.Tensor, student: torch.Tensor, center: torch.Tensor, teacher_temp: float,
                  student_temp: float) -> torch.Tensor:
    """H(t, s; c) = -sum_k softmax((t - c) / tau_t)_k log softmax(s / tau_s)_k over the last axis (K)."""
    p_teacher = F.softmax((teacher - center) / teacher_temp, dim=-1).detach()
    return -(p_teacher * F.log_softmax(student / student_temp, dim=-1)).sum(-1)


def cls_loss(t_cls: tuple[torch.Tensor, torch.Tensor], s_cls: tuple[torch.Tensor, torch.Tensor], center: torch.Tensor,
             teacher_temp: float, student_temp: float) -> torch.Tensor:
    """L_[CLS]: cross-view, 1/2 [H(t(v), s(u)) + H(t(u), s(v))], batch mean. Inputs (B, K) per view."""
    a = cross_entropy(t_cls[1], s_cls[0], center, teacher_temp, student_temp)
    b = cross_entropy(t_cls[0], s_cls[1], center, teacher_temp, student_temp)
    return 0.5 * (a.mean() + b.mean())


def _identity(count: torch.Tensor) -> torch.Tensor:
    return count


def part_loss_view(t_part: torch.Tensor, s_part: torch.Tensor, masked: torch.Tensor, center: torch.Tensor,
                   teacher_temp: float, student_temp: float, norm: str = "jet",
                   share: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """L_Part for one view (paper Eq. 1): same-view, masked tokens only. ``t_part``, ``s_part`` (B, P, K)."""
    return part_loss(cross_entropy(t_part, s_part, center, teacher_temp, student_temp), masked, norm, share)


def part_loss(h: torch.Tensor, masked: torch.Tensor, norm: str = "jet",
              share: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """L_Part for one view from the per-token cross-entropies ``h`` (B, P); only ``masked`` tokens count.

    norm="jet": per-jet mean over its masked tokens, then the mean over jets that have any (default).
    norm="batch": one mean over every masked token of the batch (the published code).
    ``share`` turns a local count into this process's share of the global one (data-parallel training).
    """
    m = masked.to(h.dtype)
    h = torch.where(masked, h, torch.zeros_like(h))  # an unmasked token's value never reaches the loss
    if norm == "batch":
        return h.sum() / share(m.sum()).clamp_min(1.0)
    n_masked = m.sum(1)  # (B,)
    per_jet = h.sum(1) / n_masked.clamp_min(1.0)
    has = (n_masked > 0).to(h.dtype)
    return (per_jet * has).sum() / share(has.sum()).clamp_min(1.0)


def koleo(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser on l2-normalised vectors (B, D): -1/B sum_i log(min_{j != i} ||x_i - x_j|| + eps)."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    with torch.no_grad():
        sim = x @ x.T  # nearest neighbour = largest cosine similarity
        sim.fill_diagonal_(-2.0)
        nn_index = sim.argmax(dim=1)
    dist = (x - x[nn_index]).norm(dim=-1)
    return -torch.log(dist + eps).mean()


def entropy(logits: torch.Tensor, temp: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy of softmax((logits - center) / temp) over the batch (a collapse monitor)."""
    z = logits if center is None else logits - center
    logp = F.log_softmax(z / temp, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()
