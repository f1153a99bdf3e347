"""What a search asks of an anomaly score beyond its AUC (docs/method.md §8.5): how much a cut on it improves the
significance, and whether it sculpts the background's jet mass.

- **SIC**, the significance improvement characteristic: SIC(ε_s) = ε_s / √ε_b along the ROC curve; ``max_sic`` is
  its maximum over working points with ε_b ≥ ``sic_floor(n_background)`` = max(1e-4, 1 / N_b), so that the maximum
  does not sit on a handful of background jets. Larger is better; a random score has SIC = √ε_s ≤ 1.
- **ρ(score, m)**: Spearman's rank correlation of the score with the jet mass within each background class. Near 0
  is good: a cut then leaves the background's mass spectrum as it was.
- **1/JSD at ε_b**: the background's mass histogram after a cut keeping the fraction ε_b of it, against the one
  before, as 1 / Jensen–Shannon divergence (base 2, in [0, 1]; shared bins: ``MASS_BINS`` quantile bins of the
  background's mass). Larger is better (identical shapes would give infinity: capped at ``JSD_INV_CAP``).

numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from jbot.evaluate.metrics import MIN_BACKGROUND

SCULPT_EPS_B = (0.5, 0.1, 0.01)  # the background efficiencies at which the mass shape is compared
MASS_BINS = 20
SIC_FLOOR = 1e-4
JSD_INV_CAP = 1e6  # 1/JSD of identical histograms (what an MLflow metric can hold)


def sic_floor(n_background: int) -> float:
    """The smallest ε_b a maximum SIC may stand on: one background jet of the test set, and at least 1e-4."""
    return max(SIC_FLOOR, 1.0 / max(n_background, 1))


def sic_curve(is_signal: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ε_s, ε_b, SIC) at every distinct threshold (larger score = more signal-like), ε_b > 0 only."""
    order = np.argsort(-score, kind="mergesort")
    s, sig = score[order], is_signal[order].astype(np.float64)
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last jet of each group of tied scores
    tp, fp = np.cumsum(sig)[last], np.cumsum(1.0 - sig)[last]
    n_sig, n_bkg = sig.sum(), len(sig) - sig.sum()
    if n_sig == 0 or n_bkg == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    eps_s, eps_b = tp / n_sig, fp / n_bkg
    ok = eps_b > 0
    return eps_s[ok], eps_b[ok], eps_s[ok] / np.sqrt(eps_b[ok])


def max_sic(is_signal: np.ndarray, score: np.ndarray) -> float:
    """The maximum SIC over working points with ε_b ≥ ``sic_floor``; NaN without signal or background."""
    eps_s, eps_b, sic = sic_curve(is_signal, score)
    keep = eps_b >= sic_floor(int((~is_signal.astype(bool)).sum()))
    return float(sic[keep].max()) if keep.any() else float("nan")


def mass_rho(score: np.ndarray, mass: np.ndarray) -> float:
    """Spearman's ρ of the score with the mass (NaN when either is constant or fewer than 3 jets)."""
    if len(score) < 3 or np.ptp(score) == 0 or np.ptp(mass) == 0:
        return float("nan")
    return float(spearmanr(score, mass).statistic)


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2, in [0, 1]) of two histograms (normalised here)."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def mass_edges(mass: np.ndarray, bins: int = MASS_BINS) -> np.ndarray:
    """Shared bins: quantiles of the background's mass (distinct edges)."""
    return np.unique(np.quantile(mass, np.linspace(0, 1, bins + 1)))


def jsd_inv_after_cut(score: np.ndarray, mass: np.ndarray, eps_b: float, bins: int = MASS_BINS) -> float:
    """1/JSD between the background's mass histogram before and after keeping its ``eps_b`` most anomalous jets;
    NaN when the cut keeps fewer than ``MIN_BACKGROUND`` jets (not resolved)."""
    keep = int(np.floor(eps_b * len(score)))
    if keep < MIN_BACKGROUND:
        return float("nan")
    edges = mass_edges(mass, bins)
    if len(edges) < 3:
        return float("nan")
    passed = mass[np.argsort(-score, kind="mergesort")[:keep]]
    before = np.histogram(mass, edges)[0].astype(np.float64)
    after = np.histogram(passed, edges)[0].astype(np.float64)
    d = jsd(before, after)
    return JSD_INV_CAP if d <= 1.0 / JSD_INV_CAP else 1.0 / d


def has_mass(mass: np.ndarray | None) -> bool:
    """A usable mass column: present, finite and not all zero (a format without one stores zeros)."""
    return mass is not None and len(mass) > 0 and bool(np.isfinite(mass).all()) and bool(np.any(mass != 0))


def sculpting_metrics(score: np.ndarray, origin: np.ndarray, mass: np.ndarray, background: tuple[int, ...],
                      names: tuple[str, ...]) -> dict[str, float]:
    """``mass_rho/<class>`` per background class and ``mass_jsd_inv/eps_b_<e>`` over the whole background."""
    out: dict[str, float] = {}
    bg = np.isin(origin, list(background))
    for o in background:
        sel = origin == o
        if sel.any():
            out[f"mass_rho/{names[o] if o < len(names) else o}"] = mass_rho(score[sel], mass[sel])
    for e in SCULPT_EPS_B:
        out[f"mass_jsd_inv/eps_b_{e:g}"] = jsd_inv_after_cut(score[bg], mass[bg], e)
    return out
