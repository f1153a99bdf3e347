"""JetClass (Qu, Li, Qian 2022): 100 M jets in 10 classes, as ROOT files (``uproot`` + ``awkward``) or as parquet
with the same names as columns (JetClass-II's layout, one row per jet, read with ``awkward`` + ``pyarrow``).

Files are named ``<channel>_<nnn>.root`` (``HToBB_000.root``) or ``.parquet``, one channel (class) per file, with
jagged particle branches (a ROOT TTree ``tree``). Every particle feature of ``jbot.data.features`` comes from its
branches: the kinematics from ``part_px, part_py, part_energy, part_deta, part_dphi`` and the jet's ``jet_pt``,
``jet_energy`` (``pt_rel = hypot(part_px, part_py) / jet_pt``, ``log_e_rel = log(part_energy / jet_energy)``, ...),
the carried ones from the branch each names (``charge`` <- ``part_charge``, ``d0`` <- ``part_d0val``, ...). A jet
is pT-ordered, cut or zero-padded to ``n_particles`` (``model.n_particles``); the jet features are ``(jet_pt,
jet_eta, jet_sdmass, jet_nparticles)``, JetNet's (pT, eta, mass, n) with the soft-drop mass. Only the branches the
declared features need are read, so a file lacking the others (a user's own skim) is fine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jbot.data.classes import VALID
from jbot.data.features import PAPER_FEATURES, layout
from jbot.errors import JbotError

TREE = "tree"
# file channel -> class label, in JetClass's label order (label_QCD, label_Hbb, ...)
CHANNELS: dict[str, str] = {
    "ZJetsToNuNu": "QCD", "HToBB": "Hbb", "HToCC": "Hcc", "HToGG": "Hgg", "HToWW4Q": "H4q",
    "HToWW2Q1L": "Hqql", "ZToQQ": "Zqq", "WToQQ": "Wqq", "TTBar": "Tbqq", "TTBarLep": "Tbl",
}
JETCLASS_LABELS: tuple[str, ...] = tuple(CHANNELS.values())
PARTICLE_BRANCHES = ("part_deta", "part_dphi", "part_px", "part_py")
JET_BRANCHES = ("jet_pt", "jet_eta", "jet_sdmass", "jet_nparticles")
# the branches a declared feature needs beyond PARTICLE_BRANCHES and JET_BRANCHES
FEATURE_BRANCHES: dict[str, tuple[str, ...]] = {
    "log_e": ("part_energy",), "log_e_rel": ("part_energy", "jet_energy"),
    "charge": ("part_charge",), "is_charged_hadron": ("part_isChargedHadron",),
    "is_neutral_hadron": ("part_isNeutralHadron",), "is_photon": ("part_isPhoton",),
    "is_electron": ("part_isElectron",), "is_muon": ("part_isMuon",),
    "d0": ("part_d0val",), "d0_err": ("part_d0err",), "dz": ("part_dzval",), "dz_err": ("part_dzerr",),
}
SUFFIXES = (".root", ".parquet")
_FILE = re.compile(r"^(?P<channel>[A-Za-z0-9]+?)_\d+$")


class MissingReader(JbotError, ImportError):
    """uproot / awkward are not installed."""


def channel_of(path: str | Path) -> str | None:
    """The JetClass channel a file's name says (``HToBB_000.root`` -> ``HToBB``), or None."""
    m = _FILE.match(Path(path).stem)
    return m["channel"] if m and m["channel"] in CHANNELS else None


def uproot_module() -> Any:
    try:
        import awkward  # noqa: F401
        import uproot
    except ImportError:
        raise MissingReader("reading ROOT files needs uproot and awkward: pip install 'jbot-hep[jetclass]'") from None
    return uproot


def branches(features: Iterable[str] = PAPER_FEATURES) -> tuple[str, ...]:
    """Every branch (column) reading ``features`` needs, in a fixed order."""
    extra = [b for f in features for b in FEATURE_BRANCHES.get(f, ())]
    return tuple(dict.fromkeys((*PARTICLE_BRANCHES, *JET_BRANCHES, *extra)))


def missing_branches(have: Iterable[str], features: Iterable[str]) -> str | None:
    """What a file lacks for ``features`` ("feature 'charge' needs the branch 'part_charge'"), or None."""
    have = set(have)
    for f in ("eta_rel", *features):
        for b in (*PARTICLE_BRANCHES, *JET_BRANCHES) if f == "eta_rel" else FEATURE_BRANCHES.get(f, ()):
            if b not in have:
                return f"feature '{f}' needs the branch '{b}', which it lacks"
    return None


def _feature_values(arrays: Any, name: str, pt: Any, jet_pt: Any) -> Any:
    """The jagged values (N, var) of one declared feature."""
    import awkward as ak

    if name in FEATURE_BRANCHES and name not in ("log_e", "log_e_rel"):
        return arrays[FEATURE_BRANCHES[name][0]]
    computed = {
        "eta_rel": lambda: arrays["part_deta"], "phi_rel": lambda: arrays["part_dphi"],
        "pt_rel": lambda: pt / jet_pt, "log_pt": lambda: np.log(pt), "log_pt_rel": lambda: np.log(pt / jet_pt),
        "log_e": lambda: np.log(arrays["part_energy"]),
        "log_e_rel": lambda: np.log(arrays["part_energy"] / arrays["jet_energy"]),
        "delta_r": lambda: np.hypot(arrays["part_deta"], arrays["part_dphi"]),
    }
    return ak.values_astype(computed[name](), np.float64)


def particle_features(arrays: Any, n_particles: int, features: Iterable[str] = PAPER_FEATURES) -> np.ndarray:
    """Jagged branches -> (N, P, F) float32 in the columns ``layout(features)``: pT-ordered, cut or zero-padded
    to P = ``n_particles``."""
    import awkward as ak

    features = tuple(features)
    jet_pt = arrays["jet_pt"]
    pt = np.hypot(arrays["part_px"], arrays["part_py"])
    order = ak.argsort(pt, axis=1, ascending=False)
    names = layout(features)
    out = np.zeros((len(jet_pt), n_particles, len(names)), dtype=np.float32)
    for col, name in enumerate(names):
        if col == VALID:
            continue
        values = _feature_values(arrays, name, pt, jet_pt)[order]
        padded = ak.fill_none(ak.pad_none(values[:, :n_particles], n_particles, clip=True), 0.0)
        out[..., col] = ak.to_numpy(padded).astype(np.float32)
    counts = np.minimum(ak.to_numpy(ak.num(pt, axis=1)), n_particles)
    out[..., VALID] = np.arange(n_particles)[None, :] < counts[:, None]
    return out


def _jets(arrays: Any) -> np.ndarray:
    return np.stack([np.asarray(arrays[b], dtype=np.float64) for b in JET_BRANCHES], axis=1).astype(np.float32)


def read_root(path: Path, start: int | None, stop: int | None, n_particles: int,
              features: Iterable[str] = PAPER_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of a JetClass ROOT file (all with None): particles (N, P, F), jet features (N, 4)."""
    uproot = uproot_module()
    features = tuple(features)
    with uproot.open(path) as f:
        arrays = f[TREE].arrays(list(branches(features)), entry_start=start, entry_stop=stop)
    return particle_features(arrays, n_particles, features), _jets(arrays)


def read_parquet(path: Path, n_particles: int, features: Iterable[str] = PAPER_FEATURES
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A parquet file with JetClass's names as columns, whole: particles (N, P, F), jet features (N, 4)."""
    ak = parquet_module()
    features = tuple(features)
    arrays = ak.from_parquet(path, columns=list(branches(features)))
    return particle_features(arrays, n_particles, features), _jets(arrays)


def read_parquet_rows(path: Path, start: int, stop: int, n_particles: int,
                      features: Iterable[str] = PAPER_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of a parquet file: the row groups the range touches, decoded in batches of at most
    ``PARQUET_BATCH`` rows from the first of them, keeping only the range's (memory: the range and one batch, not
    a whole row group). A range deep in a large row group decodes the rows before it too."""
    ak = parquet_module()
    import pyarrow
    import pyarrow.parquet as pq

    features = tuple(features)
    meta = pq.ParquetFile(path)
    bounds = np.cumsum([0] + [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)])
    groups = [i for i in range(meta.num_row_groups) if bounds[i] < stop and bounds[i + 1] > start]
    row = int(bounds[groups[0]]) if groups else start
    kept = []
    for batch in meta.iter_batches(batch_size=PARQUET_BATCH, row_groups=groups, columns=list(branches(features))):
        a, b = max(start - row, 0), min(stop - row, batch.num_rows)
        if b > a:
            kept.append(batch.slice(a, b - a))
        row += batch.num_rows
        if row >= stop:
            break
    if kept:
        arrays = ak.from_arrow(pyarrow.Table.from_batches(kept))
    else:
        arrays = ak.from_parquet(path, columns=list(branches(features)))[:0]
    return particle_features(arrays, n_particles, features), _jets(arrays)


PARQUET_BATCH = 65_536  # rows decoded at a time from a parquet file


def read_jet_features(path: Path) -> np.ndarray:
    """The jet features (N, 4) of a ROOT or parquet JetClass file alone (no particle branch read)."""
    if path.suffix == ".parquet":
        ak = parquet_module()
        return _jets(ak.from_parquet(path, columns=list(JET_BRANCHES)))
    uproot = uproot_module()
    with uproot.open(path) as f:
        return _jets(f[TREE].arrays(list(JET_BRANCHES)))


def parquet_module() -> Any:
    try:
        import awkward as ak
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingReader("reading parquet files needs awkward and pyarrow: "
                            "pip install 'jbot-hep[jetclass]'") from None
    return ak


def file_columns(path: Path) -> tuple[list[str], int]:
    """The branch (column) names of a ROOT or parquet JetClass file and its jet count, from metadata."""
    if path.suffix == ".parquet":
        parquet_module()
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return list(meta.schema_arrow.names), int(meta.metadata.num_rows)
    uproot = uproot_module()
    with uproot.open(path) as f:
        if TREE not in f:
            raise KeyError(TREE)
        tree = f[TREE]
        return list(tree.keys()), int(tree.num_entries)
