"""Summaries of a folder of jets (``jbot data info``): JetNet-layout class files, or JetClass ROOT / parquet files
(``<channel>_<nnn>.root``), one row per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jbot.data.classes import CLASS_LABELS, VALID
from jbot.data.jetnet import DataError, available_classes, check_data_dir, check_data_folder, class_file, read_jetnet
from jbot.plots import data_distributions, write_html


def summarize(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per class: jet count, the file's particle slots per jet P, multiplicity (all constituents, from
    ``jet_features``) and the valid slots stored (at most P), jet-mass / jet-pT summaries (median and 16/84 %
    quantiles). Files are read as stored, whatever their P, one at a time (only jet-level arrays are kept)."""
    classes = available_classes(check_data_folder(data_dir))
    if not classes:
        return summarize_jetclass(data_dir)
    check_data_dir(data_dir, classes)
    out: dict[str, dict[str, Any]] = {}
    for name in classes:
        jets = read_jetnet(class_file(data_dir, name), None)
        mult = jets.jets[:, 3]  # all constituents, before keeping the P hardest
        stored = (jets.particles[..., VALID] == 1).sum(axis=1).astype(np.float32)
        mass, pt = jets.jets[:, 2], jets.jets[:, 0]
        out[CLASS_LABELS[name]] = {
            "n_jets": len(jets),
            "n_particles": int(jets.particles.shape[1]),
            "multiplicity": _quantiles(mult),
            "stored": _quantiles(stored),
            "mass": _quantiles(mass),
            "pt": _quantiles(pt),
            "arrays": {"mass": mass, "pt": pt, "multiplicity": mult},
        }
    return out


def summarize_jetclass(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``summarize`` for JetClass files (ROOT or parquet): per channel, from the jet branches alone."""
    from jbot.data.jetclass import CHANNELS, SUFFIXES, channel_of, read_jet_features

    folder = Path(data_dir)
    by_channel: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in SUFFIXES and (channel := channel_of(path)) is not None:
            by_channel.setdefault(channel, []).append(path)
    if not by_channel:
        raise DataError(f"{data_dir}: no class files found: neither JetNet's (q.hdf5, g.hdf5, w.hdf5, z.hdf5, t.hdf5) "
                        "nor JetClass's (<channel>_<nnn>.root or .parquet, e.g. HToBB_000.root)")
    out: dict[str, dict[str, Any]] = {}
    for channel in (c for c in CHANNELS if c in by_channel):
        parts = []
        for path in by_channel[channel]:
            try:
                parts.append(read_jet_features(path))
            except Exception as exc:  # uproot and pyarrow raise many kinds on a damaged or foreign file
                raise DataError(f"{path}: not a readable JetClass file ({str(exc).splitlines()[0][:200]})") from None
        jets = np.concatenate(parts)
        mult, mass, pt = jets[:, 3], jets[:, 2], jets[:, 0]
        out[CHANNELS[channel]] = {
            "n_jets": len(jets), "n_particles": int(mult.max(initial=0)), "multiplicity": _quantiles(mult),
            "stored": _quantiles(mult), "mass": _quantiles(mass), "pt": _quantiles(pt),
            "arrays": {"mass": mass, "pt": pt, "multiplicity": mult}, "files": len(by_channel[channel]),
        }
    return out


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q16, q50, q84 = np.quantile(x, [0.16, 0.5, 0.84])
    return {"mean": float(x.mean()), "q16": float(q16), "median": float(q50), "q84": float(q84)}


def write_report(summary: dict[str, dict[str, Any]], path: str | Path, title: str) -> Path:
    fig = data_distributions({k: v["arrays"] for k, v in summary.items()}, title)
    return write_html(fig, path)
