"""Splits of a preset (``jbot.data.presets``; docs/method.md §1): ``5class``, ``tqg`` (top tagging), ``qg`` (anomaly
detection), ``jetclass``, or a user's preset file.

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
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from jbot.data.features import PAPER_FEATURES
from jbot.data.jetnet import DEFAULT_PARTICLES, DataError, JetSet
from jbot.data.presets import JETNET, SUBSETS, Preset, PresetError, for_anomaly, get_preset
from jbot.data.readers import class_sources, load_classes
from jbot.io import file_hash


@dataclass(frozen=True)
class Part:
    """One split part: ``x`` (N, P, F) particles, ``jet`` (N, 4) jet features, ``y`` (N,) task labels,
    ``origin`` (N,) the class index in its dataset (JetNet: q=0, g=1, W=2, Z=3, t=4; ``Preset.universe``)."""

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
    spec: Preset | None = None  # the preset as used (a subset preset narrowed to the classes present)
    features: tuple[str, ...] = PAPER_FEATURES  # the declared features the jets were read with (model.features)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


# Per-class draws: {class: (n_train, n_val, n_test)}
Plan = dict[str, tuple[int, int, int]]
ANOMALY_POOL = 150_000  # background jets per class at which the anomaly split reaches its published sizes


def _scale(published: Plan, sizes: dict[str, int]) -> float:
    need = {c: sum(v) for c, v in published.items()}
    return min(1.0, min(sizes[c] / need[c] for c in published))


def plan_balanced(preset: Preset, sizes: dict[str, int], n_train: int | None, n_val: int | None,
                  n_test: int | None) -> Plan:
    """Each task label an equal share of every set (``Preset.shares``); published sizes scaled to the data."""
    shares = preset.shares()
    published = {c: tuple(int(total * s) for total in preset.sizes) for c, s in shares.items()}
    f = _scale(published, sizes)  # type: ignore[arg-type]

    def per(n: int | None, total: int, s: Fraction) -> int:
        return int(n * s) if n is not None else int(total * s * f)

    tr, va, te = preset.sizes
    return {c: (per(n_train, tr, s), per(n_val, va, s), per(n_test, te, s)) for c, s in shares.items()}


def plan_anomaly(preset: Preset, sizes: dict[str, int], n_train: int | None, n_val: int | None,
                 n_test: int | None) -> Plan:
    """Background classes: train + val; test = the remaining background in equal counts + as many of each signal.
    Validation holds the background and the same count of each signal (the anomaly sweep tunes on it)."""
    bg = preset.background
    signals = tuple(c for c in preset.classes if c not in bg)
    f = min(1.0, min(sizes[c] for c in bg) / ANOMALY_POOL)
    tr = n_train // len(bg) if n_train is not None else int(preset.sizes[0] // len(bg) * f)
    va = n_val // len(bg) if n_val is not None else int(preset.sizes[1] // len(bg) * f)
    if n_test is not None:
        te = n_test // len(bg)
    else:
        room = [sizes[c] - tr - va for c in bg] + [sizes[s] - va for s in signals]
        te = max(0, min(room))
    plan = {c: (tr, va, te) for c in bg}
    plan.update({s: (0, va, te) for s in signals})
    return plan


PLANNERS = {"balanced": plan_balanced, "anomaly": plan_anomaly}


def task_labels(preset: Preset, origin: np.ndarray) -> np.ndarray:
    """Each jet's task label from its origin (``Preset.label_of``)."""
    table = np.full(len(preset.universe), -1, dtype=np.int64)
    for c, k in zip(preset.classes, preset.label_of, strict=True):
        table[preset.origin(c)] = k
    return table[origin]


def split_indices(sizes: dict[str, int], plan: Plan, seed: int,
                  order: tuple[str, ...] | None = None) -> dict[str, tuple[np.ndarray, ...]]:
    """Per class: (train, val, test) index arrays into that class's file; disjoint by construction. Classes are
    drawn in ``order`` (JetNet's origin order by default)."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for c in sorted(plan, key=(order or JETNET).index):
        tr, va, te = plan[c]
        if min(tr, va, te) < 0 or tr + va + te > sizes[c]:
            raise DataError(
                f"class '{c}' has {sizes[c]} jets, the split asks for {tr + va + te} "
                f"(train {tr} + val {va} + test {te}); pass smaller data.n_train / n_val / n_test"
            )
        perm = rng.permutation(sizes[c])
        out[c] = (perm[:tr], perm[tr : tr + va], perm[sizes[c] - te :])
    return out


def _assemble(preset: Preset, data: dict[str, JetSet], idx: dict[str, tuple[np.ndarray, ...]], k: int,
              rng: np.random.Generator) -> Part:
    xs, jets, origin = [], [], []
    for c, parts in idx.items():
        sel = np.sort(parts[k])
        xs.append(data[c].particles[sel])
        jets.append(data[c].jets[sel])
        origin.append(np.full(len(sel), preset.origin(c), dtype=np.int64))
    x = np.concatenate(xs)
    order = rng.permutation(len(x))  # mixed classes: no class-ordered batches downstream
    o = np.concatenate(origin)[order]
    return Part(x[order], np.concatenate(jets)[order], task_labels(preset, o), o)


def present(preset: Preset, data_dir: str | Path, anomaly: bool = False) -> Preset:
    """A subset preset (``jetclass``) narrowed to the classes whose files are in ``data_dir`` (at least two; with
    ``anomaly`` or for an anomaly preset, one of its background classes among them)."""
    if preset.name not in SUBSETS:
        return preset
    keys = tuple(c for c in preset.classes if class_sources(data_dir, c))
    if len(keys) < 2:
        found = ", ".join(keys) or "none"
        raise DataError(f"{data_dir}: preset {preset.name} needs files of at least two of its classes "
                        f"(<channel>_<nnn>.root, .parquet or .hdf5; found {found})")
    if preset.background and not any(b in keys for b in preset.background):
        if anomaly or preset.split == "anomaly":
            raise DataError(f"{data_dir}: preset {preset.name}: none of its background classes "
                            f"({', '.join(preset.background)}) has files in the folder")
    return replace(preset, classes=keys, labels=tuple(preset.name_of(c) for c in keys),
                   label_of=tuple(range(len(keys))), background=tuple(b for b in preset.background if b in keys))


def make_split(
    data_dir: str | Path,
    preset: str = "5class",
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 42,
    n_particles: int = DEFAULT_PARTICLES,
    features: tuple[str, ...] = PAPER_FEATURES,
    anomaly: bool = False,
) -> Split:
    """The split of ``preset`` (a name of ``PRESETS`` or a preset file), each jet with ``n_particles`` slots
    (``model.n_particles``: files with more keep the hardest, files with fewer are zero-padded) and the columns of
    ``features`` (``model.features``). ``anomaly``: the preset's anomaly split (``presets.for_anomaly``: train on its
    background classes, the others in validation and test only)."""
    try:
        chosen = present(get_preset(preset), data_dir, anomaly)
        if anomaly:
            chosen = for_anomaly(chosen)
    except PresetError as exc:
        raise DataError(str(exc)) from None
    data = load_classes(data_dir, chosen.classes, n_particles, features)
    sizes = {c: len(s) for c, s in data.items()}
    plan = PLANNERS[chosen.split](chosen, sizes, n_train, n_val, n_test)
    try:
        idx = split_indices(sizes, plan, seed, chosen.universe)
    except DataError as exc:
        raise DataError(f"{data_dir}: preset {chosen.name}: {exc}") from None
    if min(v[0] for c, v in plan.items() if chosen.split != "anomaly" or c in chosen.background) == 0:
        raise DataError(f"{data_dir}: preset {chosen.name}: too few jets for a training split ({sizes})")
    rng = np.random.default_rng(seed + 1)
    train, val, test = (_assemble(chosen, data, idx, k, rng) for k in range(3))
    settings: dict[str, object] = {"preset": chosen.name, "seed": seed, "plan": plan}
    if n_particles != DEFAULT_PARTICLES:  # the defaults leave the fingerprints of earlier runs as they were
        settings["n_particles"] = n_particles
    if features != PAPER_FEATURES:
        settings["features"] = list(features)
    fp = fingerprint([p for c in chosen.classes for p in class_sources(data_dir, c)], settings)
    return Split(chosen.name, train, val, test, chosen.labels, seed, fp, chosen, features)


def fingerprint(files: list[Path], extra: dict) -> str:
    """Hash of the files' contents and the split settings: two runs with equal fingerprints saw equal data."""
    h = hashlib.sha256()
    for path in files:
        key = path.stem if path.suffix == ".hdf5" and path.stem in JETNET else path.name
        h.update(f"{key}:{file_hash(path)};".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]
