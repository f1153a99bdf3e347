"""Presets as data (docs/method.md §1): which classes a split reads, how they map to the task's labels, which are
background, and the published sizes. ``PRESETS`` is the one registry: config validation, the splits, the CLI and
the Keras import read it, so adding a preset is one entry here. A user's own preset is a YAML file given in its
place (``--preset my-preset.yaml``, ``data.preset: my-preset.yaml``)::

    name: hbb-vs-qcd            # optional; the file's stem otherwise
    dataset: jetclass           # whose class names the keys are: jetnet (q, g, w, z, t) or jetclass (channels)
    classes: {ZJetsToNuNu: QCD, HToBB: Hbb}   # file key -> label; equal labels form one task class
    background: [ZJetsToNuNu]   # optional: the anomaly-detection background
    split: balanced             # optional: balanced (every label), or anomaly (train on the background alone)
    sizes: [80000, 10000, 20000]               # optional: train, val, test at full size

A class's files are ``<key>.hdf5`` (JetNet layout) or ``<key>_<nnn>.{root,parquet,hdf5}`` (JetClass's naming).
No torch: the config validates names with this module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from jbot.errors import JbotError

JETNET: tuple[str, ...] = ("q", "g", "w", "z", "t")  # JetNet's classes, in origin order
JETNET_NAMES = {"q": "q", "g": "g", "w": "W", "z": "Z", "t": "t"}
# JetClass's channels (file name prefixes) and labels, in its label order (label_QCD, label_Hbb, ...)
JETCLASS_NAMES: dict[str, str] = {
    "ZJetsToNuNu": "QCD", "HToBB": "Hbb", "HToCC": "Hcc", "HToGG": "Hgg", "HToWW4Q": "H4q",
    "HToWW2Q1L": "Hqql", "ZToQQ": "Zqq", "WToQQ": "Wqq", "TTBar": "Tbqq", "TTBarLep": "Tbl",
}
DATASETS: dict[str, dict[str, str]] = {"jetnet": JETNET_NAMES, "jetclass": JETCLASS_NAMES}


class PresetError(JbotError, ValueError):
    """A preset name that is not registered, or a preset file that cannot be used."""


@dataclass(frozen=True)
class Preset:
    """A split of a dataset's classes. ``classes``: the file keys read, in origin order within ``dataset``;
    ``labels``: the task's label names; ``label_of``: each class's task label (index into ``labels``).

    ``split``: ``balanced`` draws every task label equally (a label of several classes splits its share evenly
    among them) for train, val and test; ``anomaly`` trains on the ``background`` classes alone and puts the others
    in validation and test only (docs/method.md §1, the qg preset). ``sizes``: published (train, val, test) totals,
    scaled down to smaller data."""

    name: str
    doc: str
    dataset: str
    classes: tuple[str, ...]
    labels: tuple[str, ...]
    label_of: tuple[int, ...]
    background: tuple[str, ...]
    split: str = "balanced"
    sizes: tuple[int, int, int] = (700_000, 50_000, 95_000)

    @property
    def universe(self) -> tuple[str, ...]:
        """Every class of the dataset: a jet's ``origin`` is its class's index here."""
        return tuple(DATASETS[self.dataset])

    def origin(self, key: str) -> int:
        return self.universe.index(key)

    def name_of(self, key: str) -> str:
        return DATASETS[self.dataset].get(key, key)

    def shares(self) -> dict[str, Fraction]:
        """Each class's share of a balanced split: 1 / (labels x classes of its label)."""
        per_label = [self.label_of.count(k) for k in range(len(self.labels))]
        pairs = zip(self.classes, self.label_of, strict=True)
        return {c: Fraction(1, len(self.labels) * per_label[k]) for c, k in pairs}


def _balanced(name: str, doc: str, dataset: str, classes: tuple[str, ...], sizes: tuple[int, int, int],
              background: tuple[str, ...]) -> Preset:
    names = DATASETS[dataset]
    return Preset(name, doc, dataset, classes, tuple(names[c] for c in classes), tuple(range(len(classes))),
                  background, "balanced", sizes)


PRESETS: dict[str, Preset] = {
    "5class": _balanced("5class", "JetNet's q, g, W, Z, t, 140k / 10k / 19k jets each", "jetnet", JETNET,
                        (700_000, 50_000, 95_000), ("q", "g")),
    "tqg": Preset("tqg", "top tagging: t against q + g (half of each set top)", "jetnet", ("q", "g", "t"),
                  ("qcd", "top"), (0, 0, 1), ("q", "g"), "balanced", (285_000, 20_000, 50_000)),
    "qg": Preset("qg", "anomaly detection: train on q, g; W, Z, t in validation and test only", "jetnet", JETNET,
                 tuple(JETNET_NAMES[c] for c in JETNET), tuple(range(5)), ("q", "g"), "anomaly",
                 (260_000, 20_000, 0)),
    "jetclass": _balanced("jetclass", "JetClass's 10 classes (those present in the folder, at least two); QCD is "
                          "the anomaly background", "jetclass", tuple(JETCLASS_NAMES), (100_000_000, 5_000_000,
                                                                                          20_000_000),
                          ("ZJetsToNuNu",)),
    "jetclass-qcd": Preset("jetclass-qcd", "anomaly detection on JetClass: pre-train on QCD alone; the other channels "
                           "present in validation and test only", "jetclass", tuple(JETCLASS_NAMES),
                           tuple(JETCLASS_NAMES.values()), tuple(range(10)), ("ZJetsToNuNu",), "anomaly",
                           (130_000, 10_000, 0)),
}
# presets whose folder may hold only some of their classes (a JetClass download is often a few channels)
SUBSETS = frozenset({"jetclass", "jetclass-qcd"})


def is_preset_file(value: str) -> bool:
    return value.endswith((".yaml", ".yml"))


def get_preset(value: str) -> Preset:
    """A registered preset by name, or a user's preset from a YAML file; PresetError names the problem."""
    if value in PRESETS:
        return PRESETS[value]
    if is_preset_file(value):
        return load_preset_file(Path(value))
    raise PresetError(f"unknown preset {value!r}; choose from {', '.join(PRESETS)} or give a preset .yaml file")


def load_preset_file(path: Path) -> Preset:
    import yaml

    if not path.is_file():
        raise PresetError(f"{path}: preset file not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: not a YAML preset ({str(exc).splitlines()[0]})") from None
    return preset_from_tree(tree, path)


def preset_from_tree(tree: Any, where: Path | str) -> Preset:
    if not isinstance(tree, dict):
        raise PresetError(f"{where}: a preset is a mapping with 'classes' (file key -> label)")
    unknown = sorted(set(tree) - {"name", "doc", "dataset", "classes", "background", "split", "sizes"})
    if unknown:
        raise PresetError(f"{where}: unknown key '{unknown[0]}' (a preset has name, doc, dataset, classes, "
                          "background, split, sizes)")
    split = tree.get("split", "balanced")
    if split not in ("balanced", "anomaly"):
        raise PresetError(f"{where}: split {split!r}; choose from balanced, anomaly")
    dataset = tree.get("dataset", "jetclass")
    if dataset not in DATASETS:
        raise PresetError(f"{where}: dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    classes = tree.get("classes")
    if not isinstance(classes, dict) or len(classes) < 2:
        raise PresetError(f"{where}: 'classes' must map at least two file keys to labels")
    universe = DATASETS[dataset]
    bad = [k for k in classes if k not in universe]
    if bad:
        raise PresetError(f"{where}: class {bad[0]!r} is not a {dataset} class; choose from {', '.join(universe)}")
    keys = tuple(sorted(classes, key=list(universe).index))
    labels = tuple(dict.fromkeys(str(classes[k]) for k in keys))
    if len(labels) < 2:
        raise PresetError(f"{where}: the classes map to one label; a task needs at least two")
    background = tuple(tree.get("background") or ())
    bad = [b for b in background if b not in classes]
    if bad:
        raise PresetError(f"{where}: background {bad[0]!r} is not one of its classes ({', '.join(keys)})")
    if split == "anomaly" and not background:
        raise PresetError(f"{where}: an anomaly split trains on the background: list its 'background' classes")
    sizes = tree.get("sizes", (1_000_000, 100_000, 100_000) if split == "balanced" else
                     (130_000 * len(background), 10_000 * len(background), 0))
    if (not isinstance(sizes, (list, tuple)) or len(sizes) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
            or min(sizes[0], sizes[1]) == 0):
        raise PresetError(f"{where}: 'sizes' must be three integers (train, val, test), train and val positive")
    name = str(tree.get("name") or Path(str(where)).stem)
    return Preset(name, str(tree.get("doc", f"user preset from {where}")), dataset, keys, labels,
                  tuple(labels.index(str(classes[k])) for k in keys), background, split,
                  (sizes[0], sizes[1], sizes[2]))


@dataclass(frozen=True)
class Groups:
    """Anomaly detection's classes by origin: the background's, and each signal's (named by its task label)."""

    background: tuple[int, ...]
    signals: tuple[tuple[str, tuple[int, ...]], ...]
    background_label: str  # how tables name the background ("q, g")
    names: tuple[str, ...] = ()  # every class of the dataset by origin ("q", "g", "W", "Z", "t")

    @property
    def columns(self) -> tuple[str, ...]:
        """The signals' names and ``combined`` (every signal against the background)."""
        return (*(name for name, _ in self.signals), "combined")


def for_anomaly(preset: Preset) -> Preset:
    """The anomaly split of ``preset``: itself for one (``qg``); else its background classes trained on, the others
    signals, at the qg preset's sizes per background class. A preset without background classes is an error."""
    if preset.split == "anomaly":
        return preset
    if not preset.background:
        raise PresetError(f"preset {preset.name} declares no background classes: anomaly detection needs them "
                          "('background' in a preset file)")
    if len(preset.background) == len(preset.classes):
        raise PresetError(f"preset {preset.name}: every class is background, so there is no signal to detect")
    n_bg = len(preset.background)
    return replace(preset, split="anomaly", sizes=(130_000 * n_bg, 10_000 * n_bg, 0))


def groups(preset: Preset) -> Groups:
    """The anomaly groups of an anomaly preset (``for_anomaly``'s): signals by label, in label order."""
    background = tuple(preset.origin(c) for c in preset.background)
    signals: dict[str, list[int]] = {}
    for c, k in zip(preset.classes, preset.label_of, strict=True):
        if c not in preset.background:
            signals.setdefault(preset.labels[k], []).append(preset.origin(c))
    return Groups(background, tuple((n, tuple(o)) for n, o in signals.items()),
                  ", ".join(preset.name_of(c) for c in preset.background),
                  tuple(preset.name_of(c) for c in preset.universe))


QG_GROUPS = groups(PRESETS["qg"])
