"""How fast batches reach the training step: streamed from files (read, validated, permuted, batched) beside the
in-memory path (one gather from the device-resident tensor). No training: this is the data path alone.

    python benchmarks/stream_throughput.py --jets 400000 --window 100000
Writes benchmarks/results/stream-cpu.json. Formats: uncompressed HDF5 shards, gzip HDF5 shards (what
`jbot data convert` writes), and JetClass-layout ROOT files read through uproot (if installed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from pretrain_throughput import synthetic_jets  # the same JetNet-like jets as the step benchmark (sibling script)

from jbot.data.jetnet import JET_KEY, PARTICLE_KEY
from jbot.data.shards import find_shards
from jbot.data.stream import MemorySource, StreamSource

ROOT = Path(__file__).resolve().parent.parent


def write_hdf5(folder: Path, n: int, shards: int, gzip: bool) -> Path:
    folder.mkdir(parents=True)
    for i in range(shards):
        x = synthetic_jets(n // shards, i)
        j = np.ones((len(x), 4), np.float32)
        with h5py.File(folder / f"part_{i:03d}.hdf5", "w") as f:
            kw = {"compression": "gzip", "chunks": (1024, 30, 4)} if gzip else {}
            f.create_dataset(PARTICLE_KEY, data=x, **kw)
            f.create_dataset(JET_KEY, data=j)
    return folder


def write_root(folder: Path, n: int, shards: int) -> Path | None:
    try:
        import awkward as ak
        import uproot
    except ImportError:
        return None
    folder.mkdir(parents=True)
    for i in range(shards):
        rng = np.random.default_rng(i)
        m = n // shards
        counts = rng.integers(10, 60, m)
        pt = rng.exponential(10.0, counts.sum()) + 0.5
        angle = rng.uniform(-np.pi, np.pi, counts.sum())
        part = ak.zip({"deta": ak.unflatten(rng.normal(0, 0.2, counts.sum()), counts),
                       "dphi": ak.unflatten(rng.normal(0, 0.2, counts.sum()), counts),
                       "px": ak.unflatten(pt * np.cos(angle), counts), "py": ak.unflatten(pt * np.sin(angle), counts)})
        jet_pt = np.add.reduceat(pt, np.r_[0, np.cumsum(counts)[:-1]])
        branches = {"part": part, "jet_pt": jet_pt, "jet_eta": rng.normal(0, 1, m),
                    "jet_sdmass": rng.uniform(10, 200, m), "jet_nparticles": counts.astype(np.float64)}
        with uproot.recreate(folder / f"HToBB_{i:03d}.root") as f:
            f.mktree("tree", {k: v.type if k == "part" else v.dtype for k, v in branches.items()},
                     field_name=lambda outer, inner: f"{outer}_{inner}", counter_name=lambda c: f"n_{c}")
            f["tree"].extend(branches)
    return folder


def rate(source: MemorySource | StreamSource, batch: int) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(len(b) for b in source.batches(0, 0, batch, 0, 1))
    return n / (time.perf_counter() - start), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jets", type=int, default=400_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--window", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream-cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        x = synthetic_jets(args.jets, 0)
        r, n = rate(MemorySource(x, 0, cpu), args.batch)
        rows.append({"path": "in-memory", "jets_per_s": r, "jets": n})
        del x
        folders = {"hdf5": write_hdf5(Path(tmp) / "h5", args.jets, args.shards, gzip=False),
                   "hdf5-gzip": write_hdf5(Path(tmp) / "gz", args.jets, args.shards, gzip=True),
                   "root": write_root(Path(tmp) / "root", args.jets // 4, args.shards)}
        for name, folder in folders.items():
            if folder is None:
                continue
            source = StreamSource(find_shards(folder), args.window, 0, cpu)
            r, n = rate(source, args.batch)
            rows.append({"path": f"streamed {name}", "jets_per_s": r, "jets": n})
    for row in rows:
        print(f"{row['path']:<20} {row['jets_per_s']:>12,.0f} jets/s  ({row['jets']:,} jets, batch {args.batch})")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "window": args.window, "shards": args.shards, "threads": args.threads,
                                    "machine": platform.processor() or platform.machine(), "commit": commit.strip()},
                                   indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
