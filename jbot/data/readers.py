"""Jet files by format, one registry (``READERS``, by file extension): JetNet-layout HDF5, JetClass ROOT and parquet
with JetClass's column names. Each reader returns a validated ``JetSet`` with ``n_particles`` slots per jet and the
columns of the declared features (``jbot.data.features.layout``); an error names the file and the problem.

A class's files in a folder: ``<key>.hdf5`` (JetNet's ``q.hdf5``), or ``<key>_<nnn>.<ext>`` for any registered
extension (JetClass's ``HToBB_000.root``, ``HToBB_001.parquet``), read in name order and concatenated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jbot.data.features import PAPER_FEATURES, layout, n_columns
from jbot.data.jetnet import (
    DEFAULT_PARTICLES,
    DataError,
    JetSet,
    broken_link,
    check_data_dir,
    check_data_folder,
    read_jetnet,
    validate_jets,
    with_features,
)
from jbot.data.presets import JETNET

Reader = Callable[[Path, int, tuple[str, ...]], JetSet]


def _hdf5(path: Path, n_particles: int, features: tuple[str, ...]) -> JetSet:
    return with_features(path, read_jetnet(path, n_particles), features)


def _jetclass(path: Path, n_particles: int, features: tuple[str, ...]) -> JetSet:
    from jbot.data import jetclass

    try:
        have, _ = jetclass.file_columns(path)
    except jetclass.MissingReader:
        raise
    except KeyError:
        raise DataError(f"{path}: not a JetClass file (no TTree '{jetclass.TREE}')") from None
    except Exception as exc:  # uproot and pyarrow raise many kinds on a damaged file
        raise DataError(f"{path}: not a readable {path.suffix[1:]} file (corrupt or truncated?): {exc}") from None
    if (lack := jetclass.missing_branches(have, features)) is not None:
        raise DataError(f"{path}: {lack}")
    try:
        if path.suffix == ".parquet":
            x, jets = jetclass.read_parquet(path, n_particles, features)
        else:
            x, jets = jetclass.read_root(path, None, None, n_particles, features)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    check_columns(path, x, jets, features)
    validate_jets(path, x, jets, n_particles, n_columns(features))
    return JetSet(x, jets)


def check_columns(path: Path | str, x: np.ndarray, jets: np.ndarray, features: tuple[str, ...]) -> None:
    """NaN or inf in a JetClass file, named by the feature and the branch it came from, and the rows."""
    from jbot.data.jetclass import FEATURE_BRANCHES, JET_BRANCHES, PARTICLE_BRANCHES

    for col, branch in enumerate(JET_BRANCHES):
        bad = ~np.isfinite(jets[:, col])
        if bad.any():
            raise DataError(f"{path}: branch '{branch}': NaN or inf values in {int(bad.sum())} of {len(bad)} jets "
                            f"(first at row {int(np.flatnonzero(bad)[0])})")
    for col, name in enumerate(layout(features)):
        bad = ~np.isfinite(x[..., col]).all(axis=1)
        if bad.any():
            source = ", ".join(FEATURE_BRANCHES.get(name, PARTICLE_BRANCHES))
            raise DataError(f"{path}: feature '{name}' (from {source}): NaN or inf values in {int(bad.sum())} of "
                            f"{len(bad)} jets (first at row {int(np.flatnonzero(bad)[0])})")


READERS: dict[str, Reader] = {".hdf5": _hdf5, ".h5": _hdf5, ".root": _jetclass, ".parquet": _jetclass}


def read_jets(path: str | Path, n_particles: int = DEFAULT_PARTICLES,
              features: tuple[str, ...] = PAPER_FEATURES) -> JetSet:
    """One file, by its extension's reader."""
    path = Path(path)
    if path.suffix not in READERS:
        raise DataError(f"{path}: no reader for '{path.suffix}' files (jbot reads {', '.join(READERS)})")
    if not path.is_file():
        link = broken_link(path)
        raise DataError(f"{path}: {link}" if link else f"{path}: file not found")
    return READERS[path.suffix](path, n_particles, features)


def class_sources(data_dir: str | Path, key: str) -> list[Path]:
    """The files of class ``key`` in ``data_dir``: ``<key>.hdf5``, else ``<key>_<nnn>.<ext>`` in name order."""
    data_dir = Path(data_dir)
    single = data_dir / f"{key}.hdf5"
    if single.exists() or single.is_symlink():
        return [single]
    pattern = re.compile(rf"^{re.escape(key)}_\d+$")
    if not data_dir.is_dir():
        return []
    paths = sorted(p for p in data_dir.iterdir() if p.suffix in READERS and pattern.match(p.stem))
    stems = [p.stem for p in paths]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:  # the same file in two formats (a converted copy beside its source) would read its jets twice
        both = ", ".join(p.name for p in paths if p.stem == twice[0])
        raise DataError(f"{data_dir}: {both} are one file in two formats: its jets would be read twice (and "
                        "could land in both train and test); keep one format per file in the folder")
    return paths


def load_classes(data_dir: str | Path, classes: tuple[str, ...], n_particles: int = DEFAULT_PARTICLES,
                 features: tuple[str, ...] = PAPER_FEATURES) -> dict[str, JetSet]:
    """Every class's files, read and concatenated; a missing class is an error naming what the folder holds."""
    data_dir = check_data_folder(data_dir)
    if all(k in JETNET for k in classes):  # JetNet's own names: the checks (and messages) of its layout
        check_data_dir(data_dir, classes)
    out = {}
    for key in classes:
        paths = class_sources(data_dir, key)
        if not paths:
            have = ", ".join(sorted(p.name for p in data_dir.iterdir() if p.suffix in READERS)) or "no jet files"
            raise DataError(f"{data_dir}: no files for class '{key}' ({key}.hdf5 or {key}_<nnn>.root / .parquet "
                            f"/ .hdf5; the folder holds {have})")
        sets = [read_jets(p, n_particles, features) for p in paths]
        out[key] = sets[0] if len(sets) == 1 else JetSet(np.concatenate([s.particles for s in sets]),
                                                        np.concatenate([s.jets for s in sets]))
    return out
