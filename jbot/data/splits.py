"""The published splits as presets (docs/method.md §1): ``5class``, ``tqg`` (top tagging), ``qg`` (anomaly detection).

Every draw comes from ``numpy.random.default_rng(seed)``: one permutation per class, in class order. Train and
validation jets are taken from the front of a class's permutation and test jets from its back, so the test set
stays fixed while training sizes vary. (The published code shuffles all jets into a 780k train pool and a
100k test pool before drawing balanced sets; per-class draws give the same distribution of splits and also
work for small generated data.) Sizes left as ``None`` take the published sizes, scaled down uniformly when
the data on disk is smaller; explicit sizes larger than the data are an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jbot.data.classes import BACKGROUND, CLASS_INDEX, CLASS_LABELS, PRESET_CLASSES, SIGNALS, TQG_LABELS
from jbot.data.jetnet import (
    DEFAULT_PARTICLES,
    DataError,
    JetSet,
    class_file,
    load_classes,
)
from jbot.io import file_hash


@dataclass(frozen=True)
class Part:
    """One split part: ``x`` (N, P, F) particles, ``jet`` (N, 4) jet features, ``y`` (N,) task labels,
    ``origin`` (N,) the class index q=0, g=1, W=2, Z=3, t=4."""

    x: np.ndarray
    jet: np.ndarray
    y: np.ndarray
    origin: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: np.ndarray) -> Part:
        return Part(self.x[index], self.jet[index], self.y[index], self.origin[index])


@dataclass(frozen=True)
class Split:
    preset: str
    train: Part
    val: Part
    test: Part
    class_names: tuple[str, ...]
    seed: int
    fingerprint: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# Per-class draws: {class: (n_train, n_val, n_test)}
Plan = dict[str, tuple[int, int, int]]


def _scale(published: Plan, sizes: dict[str, int]) -> float:
    need = {c: sum(v) for c, v in published.items()}
    return min(1.0, min(sizes[c] / need[c] for c in published))


def plan_5class(sizes: dict[str, int], n_train: int | None, n_val: int | None, n_test: int | None) -> Plan:
    classes = PRESET_CLASSES["5class"]
    f = _scale({c: (140_000, 10_000, 19_000) for c in classes}, sizes)
    tr = n_train // 5 if n_train is not None else int(140_000 * f)
    va = n_val // 5 if n_val is not None else int(10_000 * f)
    te = n_test // 5 if n_test is not None else int(19_000 * f)
    return {c: (tr, va, te) for c in classes}


def plan_tqg(sizes: dict[str, int], n_train: int | None, n_val: int | None, n_test: int | None) -> Plan:
    share = {"q": 0.25, "g": 0.25, "t": 0.5}
    published = {c: (int(285_000 * s), int(20_000 * s), int(50_000 * s)) for c, s in share.items()}
    f = _scale(published, sizes)

    def per(n: int | None, total: int, s: float) -> int:
        return int(n * s) if n is not None else int(total * s * f)

    return {c: (per(n_train, 285_000, s), per(n_val, 20_000, s), per(n_test, 50_000, s)) for c, s in share.items()}


def plan_qg(sizes: dict[str, int], n_train: int | None, n_val: int | None, n_test: int | None) -> Plan:
    """Background q, g: train + val; test = remaining q and g in equal counts + as many of each of W, Z, t.
    Validation holds q, g and the same count of each signal (the anomaly sweep tunes on it)."""
    f = min(1.0, min(sizes["q"], sizes["g"]) / 150_000)
    tr = n_train // 2 if n_train is not None else int(130_000 * f)
    va = n_val // 2 if n_val is not None else int(10_000 * f)
    if n_test is not None:
        te = n_test // 2
    else:
        room = [sizes[c] - tr - va for c in BACKGROUND] + [sizes[s] - va for s in SIGNALS]
        te = max(0, min(room))
    plan = {c: (tr, va, te) for c in ("q", "g")}
    plan.update({s: (0, va, te) for s in SIGNALS})
    return plan


PLANNERS = {"5class": plan_5class, "tqg": plan_tqg, "qg": plan_qg}


def task_labels(preset: str, origin: np.ndarray) -> np.ndarray:
    if preset == "tqg":
        return (origin == CLASS_INDEX["t"]).astype(np.int64)
    return origin.astype(np.int64)


def class_names(preset: str) -> tuple[str, ...]:
    if preset == "tqg":
        return TQG_LABELS
    return tuple(CLASS_LABELS[c] for c in PRESET_CLASSES[preset])


def split_indices(sizes: dict[str, int], plan: Plan, seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Per class: (train, val, test) index arrays into that class's file; disjoint by construction."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for c in sorted(plan, key=lambda name: CLASS_INDEX[name]):
        tr, va, te = plan[c]
        if min(tr, va, te) < 0 or tr + va + te > sizes[c]:
            raise DataError(
                f"class '{c}' has {sizes[c]} jets, the split asks for {tr + va + te} "
                f"(train {tr} + val {va} + test {te}); pass smaller data.n_train / n_val / n_test"
            )
        perm = rng.permutation(sizes[c])
        out[c] = (perm[:tr], perm[tr : tr + va], perm[sizes[c] - te :])
    return out


def _assemble(preset: str, data: dict[str, JetSet], idx: dict[str, tuple[np.ndarray, ...]], k: int,
              rng: np.random.Generator) -> Part:
    xs, jets, origin = [], [], []
    for c, parts in idx.items():
        sel = np.sort(parts[k])
        xs.append(data[c].particles[sel])
        jets.append(data[c].jets[sel])
        origin.append(np.full(len(sel), CLASS_INDEX[c], dtype=np.int64))
    x = np.concatenate(xs)
    order = rng.permutation(len(x))  # mixed classes: no class-ordered batches downstream
    o = np.concatenate(origin)[order]
    return Part(x[order], np.concatenate(jets)[order], task_labels(preset, o), o)


def make_split(
    data_dir: str | Path,
    preset: str = "5class",
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 42,
    n_particles: int = DEFAULT_PARTICLES,
) -> Split:
    """The split of ``preset``, each jet with ``n_particles`` slots (``model.n_particles``: files with more keep
    the hardest, files with fewer are zero-padded; ``jbot.data.jetnet.read_jetnet``)."""
    if preset not in PLANNERS:
        raise DataError(f"unknown preset {preset!r}; choose from {', '.join(PLANNERS)}")
    data = load_classes(data_dir, PRESET_CLASSES[preset], n_particles)
    sizes = {c: len(s) for c, s in data.items()}
    plan = PLANNERS[preset](sizes, n_train, n_val, n_test)
    try:
        idx = split_indices(sizes, plan, seed)
    except DataError as exc:
        raise DataError(f"{data_dir}: preset {preset}: {exc}") from None
    if min(v[0] for c, v in plan.items() if c not in SIGNALS or preset != "qg") == 0:
        raise DataError(f"{data_dir}: preset {preset}: too few jets for a training split ({sizes})")
    rng = np.random.default_rng(seed + 1)
    train, val, test = (_assemble(preset, data, idx, k, rng) for k in range(3))
    settings: dict[str, object] = {"preset": preset, "seed": seed, "plan": plan}
    if n_particles != DEFAULT_PARTICLES:  # the default leaves the fingerprints of earlier runs as they were
        settings["n_particles"] = n_particles
    fp = fingerprint(data_dir, PRESET_CLASSES[preset], settings)
    return Split(preset, train, val, test, class_names(preset), seed, fp)


def fingerprint(data_dir: str | Path, classes: tuple[str, ...], extra: dict) -> str:
    """Hash of the files' contents and the split settings: two runs with equal fingerprints saw equal data."""
    h = hashlib.sha256()
    for c in classes:
        h.update(f"{c}:{file_hash(class_file(data_dir, c))};".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]
