"""Schedules as arrays indexed by global step (DINO's ``lr_schedule[it]``): explicit, plottable, loggable."""

from __future__ import annotations

import numpy as np


def lr_schedule(peak: float, total_steps: int, warmup_steps: int, kind: str = "constant",
                min_lr: float = 0.0) -> np.ndarray:
    """Linear warm-up from peak / warmup_steps to ``peak``, then constant (published) or cosine to ``min_lr``."""
    steps = np.arange(total_steps, dtype=np.float64)
    warm = min(warmup_steps, total_steps)
    out = np.full(total_steps, peak, dtype=np.float64)
    if warm > 0:
        out[:warm] = peak * (steps[:warm] + 1) / warm
    if kind == "cosine" and total_steps > warm:
        t = (steps[warm:] - warm) / max(1, total_steps - warm)
        out[warm:] = min_lr + 0.5 * (peak - min_lr) * (1 + np.cos(np.pi * t))
    return out


def momentum_schedule(start: float, end: float, total_steps: int) -> np.ndarray:
    """Teacher momentum: cosine from ``start`` (0.996) to ``end`` (1) over training."""
    t = np.arange(total_steps, dtype=np.float64) / max(1, total_steps - 1)
    return end - (end - start) * 0.5 * (1 + np.cos(np.pi * t))
