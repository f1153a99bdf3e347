"""Classification metrics (docs/method.md §7): accuracy, one-vs-rest AUC, signal efficiency at fixed background
efficiency, each with a +- std over stratified folds of the test set (no retraining)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold

EPS_B_TARGETS = (0.1, 0.01, 0.001)
EPS_S_TARGETS = (0.3, 0.5)  # the background rejection 1/eps_b at these signal efficiencies (two-class tasks)
# A working point at a fixed background efficiency eps_b stands on floor(N_b x eps_b) background jets of the test
# set. Below this many it is not resolved: logged with ``{name}_unresolved`` = 1 and without a fold std.
MIN_BACKGROUND = 10


def accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    return float((probs.argmax(1) == y).mean())


def auc(is_signal: np.ndarray, score: np.ndarray) -> float:
    if is_signal.all() or not is_signal.any():
        return float("nan")
    return float(roc_auc_score(is_signal, score))


def eps_s_at_eps_b(is_signal: np.ndarray, score: np.ndarray, eps_b: float) -> float:
    """The largest true-positive rate among thresholds whose false-positive rate is <= ``eps_b``."""
    if is_signal.all() or not is_signal.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(is_signal, score)
    ok = fpr <= eps_b
    return float(tpr[ok].max()) if ok.any() else 0.0


def rejection_at_eps_s(is_signal: np.ndarray, score: np.ndarray, eps_s: float) -> float:
    """1/eps_b at the first threshold whose true-positive rate reaches ``eps_s``: the background rejection there.
    No background jet passing gives 1/eps_b > N_b; it is reported as N_b (a lower bound)."""
    if is_signal.all() or not is_signal.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(is_signal, score)
    at = fpr[np.argmax(tpr >= eps_s)]
    n_b = int((~is_signal).sum())
    return float(n_b) if at <= 0 else float(1.0 / at)


def fold_std(metric: Callable[[np.ndarray], float], y: np.ndarray, n_folds: int = 10, seed: int = 0) -> float:
    """Std of ``metric(index)`` over ``n_folds`` disjoint stratified folds of the test set."""
    counts = np.bincount(y)
    n = min(n_folds, int(counts[counts > 0].min()))
    if n < 2:
        return float("nan")
    folds = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    values = [metric(idx) for _, idx in folds]
    return float(np.nanstd(values))


def classification_metrics(y: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...], n_folds: int = 10,
                           seed: int = 0) -> dict[str, float]:
    """Stable names: ``acc``, ``auc_{class}`` (one-vs-rest) and, for two classes, ``auc``, ``eps_s_at_{eps_b}``
    and ``rejection_at_{eps_s}`` (1/eps_b); each with ``{name}_std`` over folds."""
    def eps_s(target: float) -> Callable[[np.ndarray], float]:
        return lambda i: eps_s_at_eps_b(y[i] == 1, probs[i, 1], target)

    def rejection(target: float) -> Callable[[np.ndarray], float]:
        return lambda i: rejection_at_eps_s(y[i] == 1, probs[i, 1], target)

    def auc_of(c: int) -> Callable[[np.ndarray], float]:
        return lambda i: auc(y[i] == c, probs[i, c])

    named: dict[str, Callable[[np.ndarray], float]] = {"acc": lambda i: accuracy(y[i], probs[i])}
    if len(class_names) == 2:
        named["auc"] = auc_of(1)
        for target in EPS_B_TARGETS:
            named[f"eps_s_at_{target:g}"] = eps_s(target)
        for target in EPS_S_TARGETS:
            named[f"rejection_at_{target:g}"] = rejection(target)
    else:
        for c, name in enumerate(class_names):
            named[f"auc_{name}"] = auc_of(c)
    everything = np.arange(len(y))
    out: dict[str, float] = {"n_test": float(len(y)), "chance_acc": 1.0 / len(class_names)}
    for name, fn in named.items():
        out[name] = fn(everything)
        out[f"{name}_std"] = fold_std(fn, y, n_folds, seed)
    if len(class_names) == 2:
        out["n_background"] = float((y != 1).sum())
        for target in EPS_B_TARGETS:
            mark_working_point(out, f"eps_s_at_{target:g}", int((y != 1).sum()), target)
        for target in EPS_S_TARGETS:  # 1/eps_b stands on the background jets that pass: N_b / (1/eps_b)
            key = f"rejection_at_{target:g}"
            if np.isfinite(out[key]) and out[key] > 0:
                mark_working_point(out, key, int((y != 1).sum()), 1.0 / out[key])
    return out


def mark_working_point(out: dict[str, float], name: str, n_background: int, eps_b: float) -> None:
    """Add ``{name}_n_bkg`` (the background jets the working point stands on); below ``MIN_BACKGROUND`` the fold
    std is dropped and ``{name}_unresolved`` = 1 is set: the value is then a number, not a measurement."""
    n_bkg = int(np.floor(n_background * eps_b + 1e-9))
    out[f"{name}_n_bkg"] = float(n_bkg)
    if n_bkg < MIN_BACKGROUND:
        out.pop(f"{name}_std", None)
        out[f"{name}_unresolved"] = 1.0


def unresolved(metrics: dict[str, float], key: str) -> bool:
    return bool(metrics.get(f"{key}_unresolved"))


def shown(metrics: dict[str, float], key: str, digits: int = 4) -> str:
    """``0.3020 ± 0.0175``, or for a working point the test set cannot resolve ``0.3020 (not resolved: 0 bkg
    jets)``, or ``-`` when absent."""
    value = metrics.get(key)
    if value is None:
        return "-"
    if unresolved(metrics, key):
        return f"{value:.{digits}f} (not resolved: {int(metrics.get(f'{key}_n_bkg', 0))} bkg jets)"
    std = metrics.get(f"{key}_std")
    return f"{value:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{value:.{digits}f}"
