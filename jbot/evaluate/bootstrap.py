"""The bootstrap over test jets (docs/method.md §7.5): the standard error of a full-set number and the paired
difference of two models evaluated on the same test jets.

Each resample draws N jets with replacement from the N test jets (seeded: the same draws every time); a
paired difference evaluates both models on the same draw, so what the jets have in common cancels. The
returned interval is the percentile interval of the resampled values; the standard error their std. Metrics:
``accuracy`` (from probabilities (N, C) or predicted classes (N,)) and ``auc`` (a binary task: probabilities
(N, 2), class 1 the signal, or scores (N,)), the latter by mid-ranks on each resample.

The per-jet test outputs a claim compares are kept by the run as ``predictions/test.npz``
(``save_predictions``): labels, float32 probabilities, the predicted class and a hash of the test jets, so two
runs' files can be checked to hold the same jets in the same order before they are paired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
METRICS = ("accuracy", "auc")
PREDICTIONS = "predictions/test.npz"  # the artifact path of a run's per-jet test outputs
_CHUNK = 4_000_000  # resample counts held at once (resamples x jets)


class BootstrapError(ValueError):
    pass


@dataclass(frozen=True)
class Estimate:
    """A full-set number ``value`` with its bootstrap standard error ``se`` and ``level`` percentile interval."""

    value: float
    se: float
    low: float
    high: float
    n: int
    resamples: int
    seed: int
    level: float

    def excludes(self, threshold: float = 0.0) -> bool:
        """The whole interval lies above ``threshold``."""
        return bool(self.low > threshold)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """How often each of ``n`` jets is drawn in each resample: chunks of (b, n) int32 counts, ``resamples`` rows
    in all, each row summing to ``n``; the same for the same (n, resamples, seed)."""
    if n < 1:
        raise BootstrapError("the bootstrap needs at least one test jet")
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK // n)
    done = 0
    while done < resamples:
        b = min(per_chunk, resamples - done)
        draws = rng.integers(0, n, size=(b, n))
        flat = (draws + (np.arange(b) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.int32)
        done += b


def _correct(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    pred = out.argmax(1) if out.ndim == 2 else out
    if len(pred) != len(y):
        raise BootstrapError(f"{len(pred)} outputs for {len(y)} labels")
    return (pred == y).astype(np.float64)


def _score(y: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_signal, score) of a binary task; ``out`` (N, 2) probabilities or (N,) scores."""
    if out.ndim == 2:
        if out.shape[1] != 2:
            raise BootstrapError(f"AUC is for a binary task; these outputs have {out.shape[1]} classes")
        out = out[:, 1]
    if len(out) != len(y):
        raise BootstrapError(f"{len(out)} outputs for {len(y)} labels")
    return y == 1, out.astype(np.float64)


class _RankAuc:
    """ROC AUC of one model under resample weights: jets sorted by score once, tied scores grouped, then per
    resample P(signal above background) + P(tie) / 2 from cumulative background weights."""

    def __init__(self, is_signal: np.ndarray, score: np.ndarray) -> None:
        self.order = np.argsort(score, kind="mergesort")
        s = score[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.tied = len(self.starts) < len(s)
        self.sig = is_signal[self.order].astype(np.int32)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        # integer counts (each at most N) and float64 sums of their products (exact below 2**53): the AUC of the
        # drawn jets exactly, ties as sklearn counts them
        w = np.take(counts, self.order, axis=1)
        pos, every = w * self.sig, w
        if self.tied:
            pos, every = np.add.reduceat(pos, self.starts, axis=1), np.add.reduceat(every, self.starts, axis=1)
        neg = every - pos
        below = np.cumsum(neg, axis=1, dtype=np.int64)
        below -= neg
        below *= 2
        below += neg  # 2 x (background below) + (background tied), per score
        twice = np.einsum("ij,ij->i", pos.astype(np.float64), below.astype(np.float64))
        n_pairs = pos.sum(1, dtype=np.float64) * neg.sum(1, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return twice / (2.0 * n_pairs)


def _statistic(metric: str, y: np.ndarray, out: np.ndarray) -> Any:
    """A function of resample counts (b, N) -> the metric on each of the b resamples."""
    if metric == "accuracy":
        correct = _correct(y, out)
        return lambda counts: counts @ correct / len(correct)
    if metric == "auc":
        return _RankAuc(*_score(y, out))
    raise BootstrapError(f"metric is one of {', '.join(METRICS)}, not {metric!r}")


def _estimate(full: float, values: np.ndarray, n: int, resamples: int, seed: int, level: float) -> Estimate:
    values = values[np.isfinite(values)]
    if not np.isfinite(full) or len(values) < 2:
        nan = float("nan")
        return Estimate(float(full), nan, nan, nan, n, resamples, seed, level)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Estimate(float(full), float(values.std(ddof=1)), float(low), float(high), n, resamples, seed, level)


def _check(y: np.ndarray, level: float, resamples: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise BootstrapError(f"labels are (N,), not {y.shape}")
    if not 0 < level < 1 or resamples < 2:
        raise BootstrapError("the bootstrap needs 0 < level < 1 and at least 2 resamples")
    return y


def bootstrap(y: np.ndarray, out: np.ndarray, metric: str = "accuracy", resamples: int = RESAMPLES,
              seed: int = SEED, level: float = LEVEL) -> Estimate:
    """One model's ``metric`` on the full test set with its bootstrap standard error and interval."""
    y = _check(y, level, resamples)
    stat = _statistic(metric, y, np.asarray(out))
    full = float(stat(np.ones((1, len(y)), dtype=np.int32))[0])
    values = np.concatenate([stat(c) for c in resample_counts(len(y), resamples, seed)])
    return _estimate(full, values, len(y), resamples, seed, level)


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str = "accuracy",
                     resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Estimate:
    """``metric(a) - metric(b)`` for two models' outputs on the same test jets (labels ``y``): the full-set
    difference, its bootstrap standard error and percentile interval, both models evaluated on each resample."""
    y = _check(y, level, resamples)
    stat_a, stat_b = _statistic(metric, y, np.asarray(a)), _statistic(metric, y, np.asarray(b))
    ones = np.ones((1, len(y)), dtype=np.int32)
    full = float(stat_a(ones)[0] - stat_b(ones)[0])
    values = np.concatenate([stat_a(c) - stat_b(c) for c in resample_counts(len(y), resamples, seed)])
    return _estimate(full, values, len(y), resamples, seed, level)


# ------------------------------------------------------------------------------------- per-jet test outputs

def jets_hash(jet: np.ndarray, origin: np.ndarray) -> str:
    """A hash of the test jets in their order (jet features and class of origin; independent of the particle
    slots read): equal for two runs that saw the same test jets in the same order."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(jet, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(origin, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def save_predictions(path: Path, y: np.ndarray, probs: np.ndarray, *, fingerprint: str, jets: str,
                     kind: str) -> Path:
    """``predictions/test.npz``: labels ``y``, ``probs`` as float32, the predicted class ``pred`` (argmax of the
    probabilities as computed), the split ``fingerprint``, the test ``jets`` hash and what the outputs are
    (``kind``: "classifier", "knn")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.int16 if probs.shape[1] < 2**15 else np.int32
    with path.open("wb") as f:
        np.savez_compressed(f, y=np.asarray(y).astype(small), probs=np.asarray(probs, dtype=np.float32),
                            pred=np.asarray(probs).argmax(1).astype(small), fingerprint=np.array(fingerprint),
                            jets=np.array(jets), kind=np.array(kind))
    return path


@dataclass(frozen=True)
class Predictions:
    y: np.ndarray
    probs: np.ndarray
    pred: np.ndarray
    fingerprint: str
    jets: str
    kind: str

    def paired_with(self, other: Predictions) -> bool:
        """Both files hold outputs on the same test jets in the same order."""
        return self.jets == other.jets and np.array_equal(self.y, other.y)


ANOMALY_SCORES = "predictions/anomaly.npz"  # the artifact path of an anomaly run's per-jet test scores


def save_anomaly_scores(path: Path, origin: np.ndarray, scores: dict[str, np.ndarray], background: tuple[int, ...],
                        signals: tuple[tuple[str, tuple[int, ...]], ...], *, fingerprint: str, jets: str) -> Path:
    """``predictions/anomaly.npz``: each test jet's ``origin`` and every score (``score_<name>``, float32), with
    the background's and each signal's origins: what a bootstrap of the anomaly AUCs reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in signals]
    arrays: dict[str, Any] = {
        "origin": np.asarray(origin, dtype=np.int16), "background": np.asarray(background),
        "signal_names": np.array(names), "fingerprint": np.array(fingerprint), "jets": np.array(jets),
        **{f"signal_{i}": np.asarray(o) for i, (_, o) in enumerate(signals)},
        **{f"score_{k}": np.asarray(v, dtype=np.float32) for k, v in scores.items()}}
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def anomaly_auc_bootstrap(path: str | Path, score: str, resamples: int = RESAMPLES, seed: int = SEED,
                          level: float = LEVEL) -> dict[str, Estimate]:
    """Per signal (and ``combined``): the AUC of ``score`` against the background, with its bootstrap error,
    resampling that signal's and the background's test jets."""
    with np.load(path, allow_pickle=False) as z:
        if f"score_{score}" not in z.files:
            raise BootstrapError(f"{path}: no scores of {score!r}")
        origin, values, background = z["origin"].astype(np.int64), z[f"score_{score}"], z["background"]
        signals = {str(n): z[f"signal_{i}"] for i, n in enumerate(z["signal_names"])}
    bg = np.isin(origin, background)
    groups = {**signals, "combined": np.concatenate(list(signals.values()))}
    out = {}
    for name, origins in groups.items():
        sig = np.isin(origin, origins)
        keep = bg | sig
        out[name] = bootstrap(sig[keep].astype(np.int64), values[keep], "auc", resamples, seed, level)
    return out


def load_predictions(path: str | Path) -> Predictions:
    with np.load(path, allow_pickle=False) as z:
        missing = {"y", "probs", "pred", "fingerprint", "jets", "kind"} - set(z.files)
        if missing:
            raise BootstrapError(f"{path}: no {', '.join(sorted(missing))}")
        return Predictions(z["y"].astype(np.int64), z["probs"], z["pred"].astype(np.int64), str(z["fingerprint"]),
                           str(z["jets"]), str(z["kind"]))
