"""Summaries of a JetNet-layout folder (``jbot data info``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jbot.data.classes import CLASS_LABELS
from jbot.data.jetnet import DataError, available_classes, check_data_folder, load_classes
from jbot.plots import data_distributions, write_html


def summarize(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per class: jet count, multiplicity and jet-mass / jet-pT summaries (median and 16/84 % quantiles)."""
    classes = available_classes(check_data_folder(data_dir))
    if not classes:
        raise DataError(f"{data_dir}: no class files (q.hdf5, g.hdf5, w.hdf5, z.hdf5, t.hdf5) found")
    out: dict[str, dict[str, Any]] = {}
    for name, jets in load_classes(data_dir, classes).items():
        mult = jets.jets[:, 3]  # all constituents, before keeping the 30 hardest
        mass, pt = jets.jets[:, 2], jets.jets[:, 0]
        out[CLASS_LABELS[name]] = {
            "n_jets": len(jets),
            "multiplicity": _quantiles(mult),
            "mass": _quantiles(mass),
            "pt": _quantiles(pt),
            "arrays": {"mass": mass, "pt": pt, "multiplicity": mult},
        }
    return out


def _quantiles(x: np.ndarray) -> dict[str, float]:
    q16, q50, q84 = np.quantile(x, [0.16, 0.5, 0.84])
    return {"mean": float(x.mean()), "q16": float(q16), "median": float(q50), "q84": float(q84)}


def write_report(summary: dict[str, dict[str, Any]], path: str | Path, title: str) -> Path:
    fig = data_distributions({k: v["arrays"] for k, v in summary.items()}, title)
    return write_html(fig, path)
