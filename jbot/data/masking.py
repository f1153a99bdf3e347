"""pT-aware masking of student views (docs/method.md §3), vectorised over the batch."""

from __future__ import annotations

import torch

from jbot.config import MaskConfig
from jbot.data.classes import PT, VALID
from jbot.data.draws import Draws, as_draws


def draw_ratios(batch: int, cfg: MaskConfig, gen: torch.Generator | Draws, device: torch.device) -> torch.Tensor:
    """Target ratio per jet: r ~ U(ratio_min, ratio_max) with probability ``prob``, else 0. (B,)"""
    draws = as_draws(gen)
    r = draws.rand((batch,), device) * (cfg.ratio_max - cfg.ratio_min) + cfg.ratio_min
    apply = draws.rand((batch,), device) < cfg.prob
    return torch.where(apply, r, torch.zeros_like(r))


def mask_from_order(pt: torch.Tensor, valid: torch.Tensor, ratio: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The closest-to-target rule for a given order of the particles (valid slots first).

    t = ratio * sum(pt of valid); S_c = pT of the first c particles of ``order``; k = #{c >= 1: S_c < t}. Mask the
    first k or k + 1 particles, whichever S is closer to t (ties: k + 1); clamp to [1, n_valid - 1] when r > 0.
    Returns ``masked`` (B, P), True = hidden from the student; pads are never masked.
    """
    B, P = pt.shape
    pt_valid = torch.where(valid, pt, torch.zeros_like(pt))
    n_valid = valid.sum(1)  # (B,)
    target = ratio * pt_valid.sum(1)  # (B,)
    prefix = torch.cumsum(pt_valid.gather(1, order), dim=1)  # (B, P): S_1 .. S_P
    in_range = torch.arange(1, P + 1, device=pt.device)[None, :] <= n_valid[:, None]
    k = ((prefix < target[:, None]) & in_range).sum(1)  # (B,)
    zero = torch.zeros(B, 1, dtype=prefix.dtype, device=pt.device)
    sums = torch.cat([zero, prefix], dim=1)  # (B, P + 1): S_0 .. S_P
    below = sums.gather(1, k[:, None]).squeeze(1)
    above = sums.gather(1, (k + 1).clamp_max(P)[:, None]).squeeze(1)
    take_more = (above - target <= target - below) & (k < n_valid)
    count = k + take_more.long()
    positive = ratio > 0
    clamped = torch.minimum(count.clamp_min(1), (n_valid - 1).clamp_min(0))
    count = torch.where(positive, clamped, torch.zeros_like(count))
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(P, device=pt.device).expand(B, P))
    return valid & (rank < count[:, None])


def pt_aware_mask(x: torch.Tensor, cfg: MaskConfig, gen: torch.Generator | Draws) -> torch.Tensor:
    """``masked`` (B, P) for particles ``x`` (B, P, F): a random order of the valid particles per jet."""
    B, P, _ = x.shape
    valid = x[..., VALID] > 0.5
    if not cfg.enabled:
        return torch.zeros_like(valid)
    keys = as_draws(gen).rand((B, P), x.device)
    order = torch.argsort(torch.where(valid, keys, keys + 2.0), dim=1)  # valid first, random among them
    ratio = draw_ratios(B, cfg, gen, x.device)
    return mask_from_order(x[..., PT], valid, ratio, order)
