"""A folder of jet files read in row ranges: JetNet-layout HDF5 files (one class each, e.g. jbot's own ``q.hdf5``
... or ``jbot data convert`` output, any particle count), JetClass ROOT files and parquet files with JetClass's
columns. Nothing is read whole: a shard knows its length from metadata, and ``read_rows`` returns one validated
row range with ``n_particles`` slots and the columns of the declared features (a parquet file is read by the row
groups the range touches).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jbot.data.classes import CLASS_LABELS, CLASSES
from jbot.data.features import PAPER_FEATURES, n_columns
from jbot.data.jetclass import (
    CHANNELS,
    MissingReader,
    channel_of,
    file_columns,
    missing_branches,
    read_parquet_rows,
    read_root,
)
from jbot.data.jetnet import (
    JET_KEY,
    N_FEATURES,
    PARTICLE_KEY,
    DataError,
    JetSet,
    conform_particles,
    validate_particles,
    with_features,
)
from jbot.data.readers import check_columns

HDF5_SUFFIXES = (".hdf5", ".h5")
CLASS_ATTR = "class_name"  # the class of every jet of a shard written by `jbot data convert`


@dataclass(frozen=True)
class Shard:
    path: Path
    kind: str  # "hdf5", "root" or "parquet"
    n: int
    label: str | None  # the class of its jets ("q", "Hbb"), None if the name does not say


def _label(path: Path, attr: object = None) -> str | None:
    if isinstance(attr, bytes):
        attr = attr.decode()
    if isinstance(attr, str) and attr:
        return attr
    if path.stem in CLASSES:
        return CLASS_LABELS[path.stem]
    channel = channel_of(path)
    return CHANNELS[channel] if channel else None


def _hdf5_shard(path: Path) -> Shard:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file (corrupt or truncated?): {exc}") from None
    with f:
        if PARTICLE_KEY not in f or not isinstance(f[PARTICLE_KEY], h5py.Dataset):
            have = ", ".join(f.keys()) or "nothing"
            raise DataError(f"{path}: missing dataset '{PARTICLE_KEY}' (the file holds {have})")
        shape = f[PARTICLE_KEY].shape
        if len(shape) != 3 or shape[1] < 1 or shape[2] != N_FEATURES:
            raise DataError(f"{path}: dataset '{PARTICLE_KEY}' has shape {shape}, expected (N, P, {N_FEATURES})")
        if JET_KEY in f and f[JET_KEY].shape[0] != shape[0]:
            raise DataError(f"{path}: '{JET_KEY}' has {f[JET_KEY].shape[0]} jets, '{PARTICLE_KEY}' {shape[0]}")
        return Shard(path, "hdf5", int(shape[0]), _label(path, f.attrs.get(CLASS_ATTR)))


def _jetclass_shard(path: Path, features: tuple[str, ...]) -> Shard:
    kind = path.suffix[1:]
    try:
        have, n = file_columns(path)
    except MissingReader:
        raise
    except KeyError as exc:
        raise DataError(f"{path}: not a JetClass file: missing {exc.args[0]} in TTree 'tree'") from None
    except Exception as exc:  # uproot and pyarrow raise many kinds on a damaged file
        raise DataError(f"{path}: not a readable {kind} file (corrupt or truncated?): {exc}") from None
    if (lack := missing_branches(have, features)) is not None:
        raise DataError(f"{path}: not a JetClass file for these features: {lack}")
    return Shard(path, kind, n, _label(path))


STREAMED = (*HDF5_SUFFIXES, ".root", ".parquet")


def find_shards(folder: str | Path, features: tuple[str, ...] = PAPER_FEATURES) -> list[Shard]:
    """Every HDF5, ROOT and parquet file in ``folder`` (sorted by name), checked from metadata only (a JetClass
    file for the branches ``features`` need)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in STREAMED)
    if not paths:
        raise DataError(f"{folder}: no .hdf5, .h5, .root or .parquet files to stream")
    shards = [_hdf5_shard(p) if p.suffix in HDF5_SUFFIXES else _jetclass_shard(p, features) for p in paths]
    empty = [s.path.name for s in shards if s.n == 0]
    if empty:
        raise DataError(f"{folder}: empty files: {', '.join(empty)}")
    return shards


def read_rows(shard: Shard, start: int, stop: int, n_particles: int = 30, out: np.ndarray | None = None,
              features: tuple[str, ...] = PAPER_FEATURES) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[start, stop)`` of a shard, validated: particles (N, P, F) with P = ``n_particles`` and F the
    columns of ``features``, and jet features (N, 4), float32. With ``out`` (at least N rows), the particles are
    read into its first N rows (no new buffer) and returned as that view."""
    where = f"{shard.path} rows {start}-{stop}"
    n = stop - start
    if shard.kind in ("root", "parquet"):
        try:
            read = read_root if shard.kind == "root" else read_parquet_rows
            x, jets = read(shard.path, start, stop, n_particles, features)
        except Exception as exc:
            raise DataError(f"{where}: cannot be read ({exc})") from None
        check_columns(where, x, jets, features)  # rows counted from ``start``
    else:
        try:
            with h5py.File(shard.path, "r") as f:
                ds = f[PARTICLE_KEY]
                jets = (np.asarray(f[JET_KEY][start:stop], dtype=np.float32) if JET_KEY in f
                        else np.zeros((n, 4), np.float32))
                as_stored = ds.shape[1] == n_particles and features == PAPER_FEATURES
                if out is not None and as_stored and ds.dtype == np.float32:
                    ds.read_direct(out, np.s_[start:stop], np.s_[0:n])  # the fast path: no copy
                    validate_particles(where, out[:n], n_particles)
                    return out[:n], jets
                x = np.asarray(ds[start:stop], dtype=np.float32)
        except OSError as exc:
            raise DataError(f"{where}: cannot be read (corrupt or truncated file: {exc})") from None
        validate_particles(where, x, None)
        x = with_features(where, JetSet(conform_particles(x, n_particles), jets), features).particles
    if out is not None:
        out[:n] = x
        x = out[:n]
    validate_particles(where, x, n_particles, n_columns=n_columns(features))
    return x, jets


def class_names(shards: list[Shard]) -> tuple[str, ...]:
    """The classes the shards hold, in a fixed order (JetNet's, then JetClass's, then by name)."""
    order = {name: i for i, name in enumerate([CLASS_LABELS[c] for c in CLASSES] + list(CHANNELS.values()))}
    found = {s.label for s in shards if s.label is not None}
    return tuple(sorted(found, key=lambda n: (order.get(n, len(order)), n)))


def shards_fingerprint(shards: list[Shard]) -> str:
    """Names, lengths, sizes and modification times: cheap (a 100 M-jet dataset is never hashed whole)."""
    h = hashlib.sha256()
    for s in shards:
        st = s.path.stat()
        h.update(f"{s.path.name}:{s.n}:{st.st_size}:{int(st.st_mtime)};".encode())
    return h.hexdigest()[:16]
