"""``jbot data convert``: JetClass ROOT or parquet files -> HDF5 shards in the JetNet layout, for the fast streamed
path (the paper's four columns; stream the original files to train on the other declared features).

One shard per ROOT file, same stem (``HToBB_000.root`` -> ``HToBB_000.hdf5``), holding ``particle_features``
(N, P, 4) and ``jet_features`` (N, 4) and the class in the attribute ``class_name``. Each file is read in chunks
(memory bounded by ``chunk`` jets) and written atomically; a shard already converted with the same jet count
is kept, so an interrupted conversion continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from jbot.data.jetnet import JET_KEY, PARTICLE_KEY, DataError
from jbot.data.shards import CLASS_ATTR, Shard, find_shards, read_rows
from jbot.io import atomic_write


@dataclass(frozen=True)
class Converted:
    path: Path
    n_jets: int
    skipped: bool  # already there from an earlier run


def _done(path: Path, n: int) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return PARTICLE_KEY in f and f[PARTICLE_KEY].shape[0] == n
    except OSError:
        return False


def convert_shard(shard: Shard, out: Path, n_particles: int, chunk: int,
                  on_rows: Callable[[int], None] | None = None) -> Converted:
    target = out / f"{shard.path.stem}.hdf5"
    if _done(target, shard.n):
        if on_rows is not None:
            on_rows(shard.n)
        return Converted(target, shard.n, True)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            parts = f.create_dataset(PARTICLE_KEY, (shard.n, n_particles, 4), np.float32,
                                     chunks=(min(1024, shard.n), n_particles, 4), compression="gzip")
            jets = f.create_dataset(JET_KEY, (shard.n, 4), np.float32, compression="gzip")
            if shard.label:
                f.attrs[CLASS_ATTR] = shard.label
            for start in range(0, shard.n, chunk):
                stop = min(start + chunk, shard.n)
                x, j = read_rows(shard, start, stop, n_particles)
                parts[start:stop], jets[start:stop] = x, j
                if on_rows is not None:
                    on_rows(stop - start)

    return Converted(atomic_write(target, write), shard.n, False)


def root_shards(src: str | Path, n_particles: int = 30) -> list[Shard]:
    """The ROOT and parquet files of ``src`` in name order (checked from metadata); an error if there are none."""
    shards = [s for s in find_shards(src) if s.kind in ("root", "parquet")]
    if not shards:
        raise DataError(f"{src}: no .root or .parquet files to convert")
    return shards


def convert(shards: list[Shard], out: str | Path, n_particles: int = 30, chunk: int = 100_000,
            on_rows: Callable[[int], None] | None = None) -> list[Converted]:
    """Convert ROOT shards (``root_shards``) into ``out``; returns the HDF5 shards in the same order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [convert_shard(s, out, n_particles, chunk, on_rows) for s in shards]
