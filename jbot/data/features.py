"""Particle features by name (docs/method.md §1, "Declared features"), each with the role the augmentations give it.

A model's input schema is ``model.features``: a list of names from ``FEATURES`` that starts with the paper's three,
``eta_rel, phi_rel, pt_rel``. A jet is then an array (P, F) with the columns ``layout(features)``: the three, the
``valid`` flag (1 for a particle, 0 for a padded slot), then the other declared features in their order. The
paper's schema is the three alone, F = 4, the layout of every JetNet file and published model.

Roles (what the augmentations of docs/method.md §2 do to a column):

- ``kinematic``: eta_rel, phi_rel, pt_rel, rotated, smeared and split directly;
- ``scaled``: the logarithm of a momentum or energy (log_pt, log_e, log_pt_rel, log_e_rel). Rotation and smearing
  leave it (they move a particle within the jet, not its momentum), a collinear split shifts it by log a and
  log(1 - a) in the two halves, as it shifts pT;
- ``radial``: delta_r = hypot(eta_rel, phi_rel), recomputed after every augmentation;
- ``carried``: a property of the particle (charge, particle-ID flags, impact parameters), copied to both halves of
  a split and never rotated or smeared.

Padded slots hold 0 in every column. No torch, no numpy: the config validates names with this module alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PAPER_FEATURES: tuple[str, ...] = ("eta_rel", "phi_rel", "pt_rel")
VALID_NAME = "valid"
ROLES = ("kinematic", "scaled", "radial", "carried")


@dataclass(frozen=True)
class Feature:
    """One particle feature: its ``role`` and what it is."""

    role: str
    doc: str


FEATURES: dict[str, Feature] = {
    "eta_rel": Feature("kinematic", "pseudorapidity relative to the jet axis"),
    "phi_rel": Feature("kinematic", "azimuth relative to the jet axis, in (-pi, pi]"),
    "pt_rel": Feature("kinematic", "pT / jet pT"),
    "log_pt": Feature("scaled", "log(pT / GeV)"),
    "log_e": Feature("scaled", "log(E / GeV)"),
    "log_pt_rel": Feature("scaled", "log(pT / jet pT)"),
    "log_e_rel": Feature("scaled", "log(E / jet E)"),
    "delta_r": Feature("radial", "hypot(eta_rel, phi_rel), the distance to the jet axis"),
    "charge": Feature("carried", "electric charge (-1, 0, 1)"),
    "is_charged_hadron": Feature("carried", "1 for a charged hadron"),
    "is_neutral_hadron": Feature("carried", "1 for a neutral hadron"),
    "is_photon": Feature("carried", "1 for a photon"),
    "is_electron": Feature("carried", "1 for an electron"),
    "is_muon": Feature("carried", "1 for a muon"),
    "d0": Feature("carried", "transverse impact parameter (mm; 0 for neutral particles)"),
    "d0_err": Feature("carried", "its uncertainty (mm)"),
    "dz": Feature("carried", "longitudinal impact parameter (mm)"),
    "dz_err": Feature("carried", "its uncertainty (mm)"),
}


def check_features(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a schema, or a ValueError saying what is wrong (an unknown name, a repeat, the three missing)."""
    names = tuple(names)
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise ValueError(f"unknown particle feature {unknown[0]!r}; choose from {', '.join(FEATURES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"particle feature {repeated[0]!r} is listed twice")
    if names[:3] != PAPER_FEATURES:
        raise ValueError(f"the feature list must start with {', '.join(PAPER_FEATURES)} (the augmentations act on "
                         f"them), got {', '.join(names[:3]) or 'nothing'}")
    return names


def layout(features: Iterable[str]) -> tuple[str, ...]:
    """The columns of a jet array: the three kinematic features, ``valid``, then the others in declared order."""
    features = tuple(features)
    return (*features[:3], VALID_NAME, *features[3:])


def n_columns(features: Iterable[str]) -> int:
    return len(tuple(features)) + 1


@dataclass(frozen=True)
class Columns:
    """The column indices of each role beyond the kinematic three (what the augmentations must know)."""

    scaled: tuple[int, ...] = ()
    radial: tuple[int, ...] = ()
    carried: tuple[int, ...] = ()


def columns(features: Iterable[str]) -> Columns:
    names = layout(features)
    by = {role: tuple(i for i, n in enumerate(names) if n in FEATURES and FEATURES[n].role == role) for role in ROLES}
    return Columns(by["scaled"], by["radial"], by["carried"])


PAPER_COLUMNS = Columns()
