"""JetClass (Qu, Li, Qian 2022): 100 M jets in 10 classes, ROOT files read with ``uproot`` + ``awkward``.

Files are named ``<channel>_<nnn>.root`` (``HToBB_000.root``), one channel (class) per file, with a TTree ``tree``
of jagged particle branches. jbot's four particle features come from its branches as
``(eta_rel, phi_rel, pt_rel, valid) = (part_deta, part_dphi, hypot(part_px, part_py) / jet_pt, 1)``, pT-ordered,
cut or zero-padded to ``n_particles`` (30 by default, ``model.n_particles``); the jet features are
``(jet_pt, jet_eta, jet_sdmass, jet_nparticles)``, JetNet's (pT, eta, mass, n) with the soft-drop mass.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jbot.data.classes import ETA, PHI, PT, VALID
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
        raise MissingReader("reading ROOT files needs uproot and awkward: pip install 'jbot[jetclass]'") from None
    return uproot


def particle_features(deta: Any, dphi: Any, px: Any, py: Any, jet_pt: np.ndarray, n_particles: int) -> np.ndarray:
    """Jagged branches (N, var) -> (N, P, 4) float32: pT-ordered, cut or zero-padded to P = ``n_particles``."""
    import awkward as ak

    pt = np.hypot(px, py)
    order = ak.argsort(pt, axis=1, ascending=False)
    out = np.zeros((len(jet_pt), n_particles, 4), dtype=np.float32)
    cols = {ETA: deta[order], PHI: dphi[order], PT: (pt / jet_pt)[order]}
    for col, values in cols.items():
        padded = ak.fill_none(ak.pad_none(values[:, :n_particles], n_particles, clip=True), 0.0)
        out[..., col] = ak.to_numpy(padded).astype(np.float32)
    counts = np.minimum(ak.to_numpy(ak.num(pt, axis=1)), n_particles)
    out[..., VALID] = np.arange(n_particles)[None, :] < counts[:, None]
    return out


def read_root(path: Path, start: int, stop: int, n_particles: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of a JetClass file: particles (N, P, 4) and jet features (N, 4), float32."""
    uproot = uproot_module()
    with uproot.open(path) as f:
        arrays = f[TREE].arrays(list(PARTICLE_BRANCHES + JET_BRANCHES), entry_start=start, entry_stop=stop)
    jet_pt = arrays["jet_pt"].to_numpy().astype(np.float64)
    x = particle_features(arrays["part_deta"], arrays["part_dphi"], arrays["part_px"], arrays["part_py"],
                          jet_pt, n_particles)
    jets = np.stack([arrays[b].to_numpy() for b in JET_BRANCHES], axis=1).astype(np.float32)
    return x, jets


def root_entries(path: Path) -> int:
    uproot = uproot_module()
    with uproot.open(path) as f:
        if TREE not in f:
            raise KeyError(TREE)
        tree = f[TREE]
        missing = [b for b in PARTICLE_BRANCHES + JET_BRANCHES if b not in tree]
        if missing:
            raise KeyError(", ".join(missing))
        return int(tree.num_entries)
