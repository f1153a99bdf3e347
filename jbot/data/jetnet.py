"""JetNet-layout HDF5 files (docs/method.md §1): one file per class, read and written with h5py, validated on read.

Layout of ``{q,g,w,z,t}.hdf5``:
  particle_features  float32 (N, P, F=4) = (eta_rel, phi_rel, pt_rel, valid), pT-sorted, zero-padded
  jet_features       float32 (N, 4)      = (pT, eta, mass, n_particles)

P is the file's own particle count (30 for JetNet, 150 for JetNet150, anything for one's own jets). The reader
returns ``model.n_particles`` slots per jet: a file with more keeps the hardest (highest pT_rel first), one with
fewer is zero-padded (valid = 0), and a file with exactly that many is returned as stored.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jbot.data.classes import CLASSES, ETA, PHI, PT, VALID
from jbot.errors import JbotError
from jbot.io import atomic_write

PARTICLE_KEY = "particle_features"
JET_KEY = "jet_features"
N_FEATURES = 4
JET_FEATURE_NAMES = ("pt", "eta", "mass", "n_particles")


class DataError(JbotError, ValueError):
    """Input data that cannot be used; the message names the file, the dataset and the problem."""


@dataclass(frozen=True)
class JetSet:
    """Jets of one class: ``particles`` (N, P, F) float32, ``jets`` (N, 4) float32."""

    particles: np.ndarray
    jets: np.ndarray

    def __len__(self) -> int:
        return int(self.particles.shape[0])


def class_file(data_dir: str | Path, name: str) -> Path:
    return Path(data_dir) / f"{name}.hdf5"


def write_jetnet(path: str | Path, particles: np.ndarray, jets: np.ndarray) -> Path:
    """Write one class file atomically (temp file in the same folder, then rename)."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(PARTICLE_KEY, data=np.asarray(particles, dtype=np.float32), compression="gzip")
            f.create_dataset(JET_KEY, data=np.asarray(jets, dtype=np.float32), compression="gzip")

    return atomic_write(path, write)


def _read_dataset(f: h5py.File, path: Path, key: str) -> np.ndarray:
    if key not in f:
        have = ", ".join(sorted(f.keys())) or "nothing"
        raise DataError(f"{path}: missing dataset '{key}' (the file holds {have})")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is a group, expected a dataset")
    if ds.dtype.kind != "f":
        raise DataError(f"{path}: dataset '{key}' has dtype {ds.dtype}, expected floating point (float32)")
    try:
        return np.asarray(ds[()], dtype=np.float32)
    except OSError as exc:
        raise DataError(f"{path}: dataset '{key}' cannot be read (corrupt or truncated file: {exc})") from None


def broken_link(path: Path) -> str | None:
    """What ``path`` is when it is a symbolic link that leads nowhere ("a symbolic link that ..."), else None."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        target = os.readlink(path)
        if exc.errno == errno.ELOOP:
            return f"a symbolic link that loops (it points to {target}; following the links never reaches a file)"
        return f"a symbolic link that points to {target}, which does not exist"
    return None


DEFAULT_PARTICLES = 30  # JetNet's, and ``model.n_particles``' default
CONFORM_BLOCK = 65_536  # jets ordered and cut at a time (bounds the memory of the sort)


def read_jetnet(path: str | Path, n_particles: int | None = DEFAULT_PARTICLES) -> JetSet:
    """Read and validate one class file (any particle count P); its particles come back with ``n_particles``
    slots per jet (``conform_particles``), or as stored with ``None``."""
    path = Path(path)
    if not path.is_file():
        link = broken_link(path)
        raise DataError(f"{path}: {link}" if link else f"{path}: file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {exc}") from None
    with f:
        particles = _read_dataset(f, path, PARTICLE_KEY)
        jets = _read_dataset(f, path, JET_KEY)
    validate_jets(path, particles, jets)
    if n_particles is not None:
        particles = conform_particles(particles, n_particles)
    return JetSet(particles=particles, jets=jets)


def with_features(path: str | Path, jets: JetSet, features: tuple[str, ...]) -> JetSet:
    """``jets`` (the paper's four columns) with the declared ``features`` (``jbot.data.features``) computed from
    them and the jet features: log_pt, log_pt_rel, delta_r exactly; log_e and log_e_rel for massless particles
    (E = pT cosh(eta_rel + jet eta), the jet's E = sqrt(m^2 + (pT cosh eta)^2)). A JetNet-layout file holds no
    carried feature (charge, particle ID, impact parameters): asking for one is an error naming the file."""
    extra = features[3:]
    if not extra:
        return jets
    from jbot.data.features import FEATURES

    carried = [f for f in extra if FEATURES[f].role == "carried"]
    if carried:
        raise DataError(f"{path}: feature '{carried[0]}' is not in a JetNet-layout file (it holds eta_rel, phi_rel, "
                        "pt_rel and the jet's pT, eta, mass; JetClass ROOT and parquet files carry charge, particle "
                        "ID and impact parameters)")
    x = jets.particles
    valid = x[..., VALID] == 1
    jet_pt, jet_eta, jet_m = (jets.jets[:, i, None].astype(np.float64) for i in range(3))
    pt_rel = np.where(valid, x[..., PT], 1.0).astype(np.float64)
    energy = pt_rel * jet_pt * np.cosh(x[..., ETA] + jet_eta)
    jet_e = np.sqrt(jet_m ** 2 + (jet_pt * np.cosh(jet_eta)) ** 2)
    computed = {
        "log_pt": lambda: np.log(pt_rel * jet_pt), "log_pt_rel": lambda: np.log(pt_rel),
        "log_e": lambda: np.log(energy), "log_e_rel": lambda: np.log(energy / jet_e),
        "delta_r": lambda: np.hypot(x[..., ETA], x[..., PHI]),
    }
    cols = [np.where(valid, computed[f](), 0.0).astype(np.float32) for f in extra]
    return JetSet(np.concatenate([x, np.stack(cols, axis=-1)], axis=-1), jets.jets)


def conform_particles(particles: np.ndarray, n_particles: int) -> np.ndarray:
    """Validated particles (N, P, F) -> (N, ``n_particles``, F): with P = ``n_particles`` the array itself; else
    each jet's valid slots in decreasing pT_rel (padded slots last, a stable order: a pT-sorted jet keeps its
    order), then cut to the hardest ``n_particles`` or zero-padded (valid = 0) up to them."""
    if n_particles < 1:
        raise ValueError(f"n_particles must be positive, got {n_particles}")
    n, p, f = particles.shape
    if p == n_particles:
        return particles
    out = np.zeros((n, n_particles, f), dtype=np.float32)
    keep = min(p, n_particles)
    for start in range(0, n, CONFORM_BLOCK):
        block = particles[start:start + CONFORM_BLOCK]
        key = np.where(block[..., VALID] == 1, block[..., PT], -np.inf)
        if np.all(key[:, :-1] >= key[:, 1:]):  # pT-sorted already (the layout's promise): no reordering
            out[start:start + len(block), :keep] = block[:, :keep]
            continue
        order = np.argsort(-key, axis=1, kind="stable")[:, :keep]
        out[start:start + len(block), :keep] = np.take_along_axis(block, order[..., None], axis=1)
    return out


def _bad(path: Path, key: str, what: str, bad_jets: np.ndarray) -> None:
    n_bad = int(np.count_nonzero(bad_jets))
    if n_bad:
        first = int(np.flatnonzero(bad_jets)[0])
        raise DataError(
            f"{path}: dataset '{key}': {what} in {n_bad} of {bad_jets.size} jets (first at index {first})"
        )


def validate_jets(path: str | Path, particles: np.ndarray, jets: np.ndarray, n_particles: int | None = None,
                  n_columns: int = N_FEATURES) -> None:
    """Shapes, finiteness, the valid flag, empty padded slots and positive pT_rel (docs/method.md §1); particles
    (N, P, ``n_columns``) with any P >= 1, or exactly ``n_particles`` when given."""
    path = Path(path)
    _check_particle_shape(path, particles, n_particles, n_columns=n_columns)
    if jets.ndim != 2 or jets.shape[1] != len(JET_FEATURE_NAMES):
        raise DataError(f"{path}: dataset '{JET_KEY}' has shape {jets.shape}, expected (N, 4)")
    if jets.shape[0] != particles.shape[0]:
        raise DataError(
            f"{path}: '{JET_KEY}' has {jets.shape[0]} jets but '{PARTICLE_KEY}' has {particles.shape[0]}"
        )
    _bad(path, JET_KEY, "NaN or inf values", ~np.isfinite(jets).all(axis=1))
    validate_particles(path, particles, n_particles, n_columns=n_columns)


# Physical ranges of the relative coordinates, generous enough for any real jet: a soft massive constituent is
# clustered in rapidity but stored in pseudorapidity, so |eta_rel| can exceed the jet radius (seen above 2 in
# generated R = 0.8 jets), yet no detector reaches |eta| > 5; phi_rel lies within one turn. Values beyond these
# are corrupt or in other units (1e30 passes a finiteness check and makes the loss NaN).
MAX_ETA_REL = 10.0
MAX_PHI_REL = 2 * np.pi
MAX_PT_REL = 2.0


def _check_particle_shape(path: Path, particles: np.ndarray, n_particles: int | None,
                          key: str = PARTICLE_KEY, n_columns: int = N_FEATURES) -> None:
    if n_particles is None:
        if particles.ndim != 3 or particles.shape[1] < 1 or particles.shape[2] != n_columns:
            raise DataError(f"{path}: dataset '{key}' has shape {particles.shape}, expected (N, P, {n_columns}) "
                            f"(P >= 1 particles per jet, {n_columns} features each)")
        return
    if particles.ndim != 3 or particles.shape[1:] != (n_particles, n_columns):
        raise DataError(f"{path}: dataset '{key}' has shape {particles.shape}, "
                        f"expected (N, {n_particles}, {n_columns})")


def validate_particles(path: str | Path, particles: np.ndarray, n_particles: int | None = DEFAULT_PARTICLES,
                       key: str = PARTICLE_KEY, n_columns: int = N_FEATURES) -> None:
    """The particle-level checks alone (inputs given as arrays, e.g. ``x`` of an .npz file): exactly
    ``n_particles`` slots per jet, or any count with ``None``; ``n_columns`` columns (the declared features and
    the valid flag), the first four checked as (eta_rel, phi_rel, pt_rel, valid)."""
    path = Path(path)
    _check_particle_shape(path, particles, n_particles, key, n_columns)
    if particles.shape[0] == 0:
        raise DataError(f"{path}: dataset '{key}' is empty (0 jets)")
    _bad(path, key, "NaN or inf values", ~np.isfinite(particles).all(axis=(1, 2)))
    flag = particles[..., VALID]
    _bad(path, key, "'valid' flag not 0 or 1", ((flag != 0) & (flag != 1)).any(axis=1))
    valid = flag == 1
    pads_filled = (~valid[..., None] & (particles != 0)).any(axis=(1, 2))
    _bad(path, key, "non-zero features in padded slots (valid = 0)", pads_filled)
    _bad(path, key, "pT_rel <= 0 on valid slots", (valid & (particles[..., PT] <= 0)).any(axis=1))
    outside = (np.abs(particles[..., ETA]) > MAX_ETA_REL) | (np.abs(particles[..., PHI]) > MAX_PHI_REL)
    _bad(path, key, f"|eta_rel| > {MAX_ETA_REL:g} or |phi_rel| > 2 pi on valid slots (not a jet constituent)",
         (valid & outside).any(axis=1))
    _bad(path, key, f"pT_rel > {MAX_PT_REL} on valid slots (a constituent carries at most about its jet's pT)",
         (valid & (particles[..., 2] > MAX_PT_REL)).any(axis=1))


def check_data_dir(data_dir: str | Path, classes: tuple[str, ...]) -> Path:
    """The folder exists and holds a file per class (cheap: checked before anything heavy is loaded)."""
    data_dir = check_data_folder(data_dir)
    for name in classes:
        path = class_file(data_dir, name)
        if (link := broken_link(path)) is not None:
            raise DataError(f"{path}: the file for class '{name}' is {link}")
        if path.exists() and not path.is_file():
            raise DataError(f"{path}: the file for class '{name}' is a directory, not an HDF5 file")
        if not path.is_file():
            have = ", ".join(sorted(p.name for p in data_dir.glob("*.hdf5"))) or "no .hdf5 files"
            raise DataError(f"{path}: missing file for class '{name}' (the folder holds {have})")
    return data_dir


def check_data_folder(data_dir: str | Path) -> Path:
    """``data_dir`` is a folder (a file given in its place, or nothing there, is an error saying so)."""
    data_dir = Path(data_dir)
    if data_dir.is_dir():
        return data_dir
    if (link := broken_link(data_dir)) is not None:
        raise DataError(f"{data_dir}: the data folder is {link}")
    if data_dir.exists():
        files = ", ".join(f"{c}.hdf5" for c in CLASSES)
        raise DataError(f"{data_dir} is a file, not a folder: --data (data.dir, `jbot data info`) takes the folder "
                        f"holding the class files ({files}), e.g. {data_dir.parent}")
    raise DataError(f"{data_dir}: data folder not found (make one with `jbot data generate --out {data_dir}`)")


def available_classes(data_dir: str | Path) -> tuple[str, ...]:
    """The classes whose file is in the folder (a symbolic link to nothing included: reading it says so)."""
    return tuple(c for c in CLASSES if os.path.lexists(class_file(data_dir, c)))


