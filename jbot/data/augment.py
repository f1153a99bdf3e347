"""Physics augmentations (docs/method.md §2), vectorised over the batch on the training device.

Input and output: particles ``x`` (B, P, F) with F = (eta_rel, phi_rel, pt_rel, valid). Randomness comes from
an explicit ``torch.Generator`` on the same device as ``x``; every jet (and every call, i.e. every view) draws
its own numbers. Padded slots (valid = 0) are never touched, except that splitting fills them with daughters.
"""

from __future__ import annotations

import math

import torch

from jbot.config import AugmentConfig
from jbot.data.classes import ETA, PHI, PT, VALID
from jbot.data.draws import Draws, as_draws
from jbot.data.features import PAPER_COLUMNS, Columns


def _uniform(shape: tuple[int, ...], gen: torch.Generator | Draws, device: torch.device, lo: float,
             hi: float) -> torch.Tensor:
    return as_draws(gen).rand(shape, device) * (hi - lo) + lo


def wrap_phi(phi: torch.Tensor) -> torch.Tensor:
    """Map angles into (-pi, pi]."""
    return math.pi - torch.remainder(math.pi - phi, 2 * math.pi)


def rotate(x: torch.Tensor, gen: torch.Generator | Draws) -> torch.Tensor:
    """Rotation about the jet axis by theta ~ U(-pi, pi) per jet."""
    theta = _uniform((x.shape[0], 1), gen, x.device, -math.pi, math.pi)  # (B, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    eta, phi = x[..., ETA], x[..., PHI]
    out = x.clone()
    out[..., ETA] = eta * cos - phi * sin
    out[..., PHI] = eta * sin + phi * cos
    return out


def radial_update(x: torch.Tensor, cols: Columns) -> torch.Tensor:
    """``x`` with its delta_r columns recomputed from eta_rel, phi_rel on valid slots (pads stay 0)."""
    if not cols.radial:
        return x
    r = torch.where(x[..., VALID] > 0.5, torch.hypot(x[..., ETA], x[..., PHI]), torch.zeros_like(x[..., ETA]))
    out = x.clone()
    for c in cols.radial:
        out[..., c] = r
    return out


def smear(x: torch.Tensor, gen: torch.Generator | Draws, scale: float, padded_too: bool = False,
          cols: Columns = PAPER_COLUMNS) -> torch.Tensor:
    """Gaussian smearing of eta and phi with std = scale / pt_rel (JetCLR convention, scale = Lambda/pT_jet);
    delta_r columns follow."""
    valid = x[..., VALID] > 0.5  # (B, P)
    hit = torch.ones_like(valid) if padded_too else valid
    # pads have pt_rel = 0: the published code's floor gives them eta, phi of order +-300
    sigma = torch.where(hit, scale / x[..., PT].clamp_min(1e-6), torch.zeros_like(x[..., PT]))  # (B, P)
    noise = as_draws(gen).randn((*x.shape[:2], 2), x.device)  # (B, P, 2)
    out = x.clone()
    out[..., ETA] = x[..., ETA] + noise[..., 0] * sigma
    out[..., PHI] = torch.where(hit, wrap_phi(x[..., PHI] + noise[..., 1] * sigma), x[..., PHI])
    return radial_update(out, cols)


def _order_of(flags: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Slot indices with the flagged slots first, in ascending ``keys`` order: (B, P) -> (B, P)."""
    big = torch.where(flags, keys, keys + 2.0)  # keys in [0, 1): unflagged slots sort after flagged ones
    return torch.argsort(big, dim=1)


def collinear_split(x: torch.Tensor, gen: torch.Generator | Draws, lo: float = 0.3, hi: float = 0.7,
                    conserve: bool = True, cols: Columns = PAPER_COLUMNS) -> torch.Tensor:
    """Split n = min(#empty, #valid) randomly chosen valid particles of each jet in two at the same (eta, phi)
    with pT fractions a and 1 - a, a ~ U(lo, hi); the second daughter fills an empty slot (valid = 1), so the
    total pT is conserved exactly. ``conserve=False`` reproduces the published code, whose daughters fell off
    the end of the array: the parents only lose pT. A daughter copies its parent's other columns (carried
    features, delta_r); scaled columns (log pT, log E) move by log a and log(1 - a) with the pT."""
    B, P, _ = x.shape
    valid = x[..., VALID] > 0.5  # (B, P)
    n_split = torch.minimum(valid.sum(1), (~valid).sum(1))  # (B,)
    parents = _order_of(valid, as_draws(gen).rand((B, P), x.device))  # random valid first
    slots = _order_of(~valid, torch.arange(P, device=x.device).expand(B, P) / P)  # empty slots in order
    a = _uniform((B, P), gen, x.device, lo, hi)  # fraction kept by the k-th parent
    active = torch.arange(P, device=x.device)[None, :] < n_split[:, None]  # (B, P): k < n
    keep = torch.where(active, a, torch.ones_like(a))

    out = x.clone()
    parent_x = x.gather(1, parents[..., None].expand(B, P, x.shape[2]))  # (B, P, F) k-th parent
    factor = torch.ones_like(a).scatter(1, parents, keep)  # (B, P) per slot
    out[..., PT] = x[..., PT] * factor
    for c in cols.scaled:  # factor is 1 on pads and unsplit particles: their columns stay as they were
        out[..., c] = x[..., c] + torch.log(factor)
    if conserve:
        daughter = parent_x.clone()
        daughter[..., PT] = parent_x[..., PT] * (1.0 - a)
        daughter[..., VALID] = 1.0
        for c in cols.scaled:
            daughter[..., c] = parent_x[..., c] + torch.log1p(-a)
        current = out.gather(1, slots[..., None].expand(B, P, x.shape[2]))
        placed = torch.where(active[..., None], daughter, current)
        out = out.scatter(1, slots[..., None].expand(B, P, x.shape[2]), placed)
    return out


def augment(x: torch.Tensor, gen: torch.Generator | Draws, cfg: AugmentConfig,
            cols: Columns = PAPER_COLUMNS) -> torch.Tensor:
    """One view: rotation, smearing, collinear splitting, in that order (docs/method.md §2). Rotation about the
    jet axis keeps delta_r and touches no declared column."""
    if cfg.rotation:
        x = rotate(x, gen)
    if cfg.smear and cfg.smear_scale > 0:
        x = smear(x, gen, cfg.smear_scale, cfg.smear_padded, cols)
    if cfg.split:
        x = collinear_split(x, gen, cfg.split_min, cfg.split_max, conserve=cfg.split_mode == "conserve", cols=cols)
    return x
