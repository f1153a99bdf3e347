"""JetNet's five jet classes and the conventions built on them, defined once (no torch, no numpy).

A jet's *origin* is its index in ``CLASSES``. Anomaly detection treats q and g as background and W, Z, t as
signals. Particle features are columns ``ETA, PHI, PT, VALID`` (relative eta, relative phi, pT fraction, and 1
for a real particle, 0 for padding).
"""

from __future__ import annotations

from typing import Any

CLASSES: tuple[str, ...] = ("q", "g", "w", "z", "t")  # file stems (``<stem>.hdf5``), in origin order
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
CLASS_LABELS = {"q": "q", "g": "g", "w": "W", "z": "Z", "t": "t"}  # how figures and tables name them
LABELS: tuple[str, ...] = tuple(CLASS_LABELS[c] for c in CLASSES)
BACKGROUND: tuple[str, ...] = ("q", "g")
SIGNALS: tuple[str, ...] = ("w", "z", "t")

ETA, PHI, PT, VALID = 0, 1, 2, 3  # particle feature columns


def is_background(origin: Any) -> Any:
    """Elementwise: the jet is q or g (works on numpy arrays and torch tensors)."""
    return origin < len(BACKGROUND)


def is_signal(origin: Any, label: str | None = None) -> Any:
    """Elementwise: the jet is W, Z or t, or only the signal whose label (``"W"``) or stem (``"w"``) is given."""
    if label is None:
        return origin >= len(BACKGROUND)
    return origin == CLASS_INDEX[label.lower()]
