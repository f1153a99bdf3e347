"""The augmentations' role rules (docs/method.md §2, jbot.data.features): carried features are never changed by
rotation or smearing and are copied to both halves of a split; delta_r follows eta_rel, phi_rel; scaled features
(log pT) move with the split fraction; pT is conserved."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jbot.config import AugmentConfig
from jbot.data.augment import augment, collinear_split, rotate, smear
from jbot.data.features import columns, layout

FEATURES = ("eta_rel", "phi_rel", "pt_rel", "log_pt_rel", "delta_r", "charge", "is_photon", "d0")
COL = {name: i for i, name in enumerate(layout(FEATURES))}
CARRIED = [COL[n] for n in ("charge", "is_photon", "d0")]
COLS = columns(FEATURES)


def jets(seed: int, b: int = 6, p: int = 12) -> torch.Tensor:
    """Consistent jets: delta_r and log pT_rel computed from the kinematics, random carried properties."""
    rng = np.random.default_rng(seed)
    x = np.zeros((b, p, len(COL)), np.float32)
    for i in range(b):
        m = int(rng.integers(1, p + 1))
        pt = rng.exponential(1.0, m) + 1e-2
        x[i, :m, COL["eta_rel"]], x[i, :m, COL["phi_rel"]] = rng.normal(0, 0.2, m), rng.normal(0, 0.2, m)
        x[i, :m, COL["pt_rel"]] = np.sort(pt)[::-1] / pt.sum()
        x[i, :m, COL["valid"]] = 1
        x[i, :m, COL["log_pt_rel"]] = np.log(x[i, :m, COL["pt_rel"]])
        x[i, :m, COL["delta_r"]] = np.hypot(x[i, :m, COL["eta_rel"]], x[i, :m, COL["phi_rel"]])
        x[i, :m, COL["charge"]] = rng.choice([-1, 0, 1], m)
        x[i, :m, COL["is_photon"]] = rng.integers(0, 2, m)
        x[i, :m, COL["d0"]] = rng.normal(0, 0.05, m)
    return torch.from_numpy(x)


def _consistent(out: torch.Tensor) -> None:
    valid = out[..., COL["valid"]] > 0.5
    r = torch.hypot(out[..., COL["eta_rel"]], out[..., COL["phi_rel"]])
    torch.testing.assert_close(out[..., COL["delta_r"]][valid], r[valid], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[..., COL["log_pt_rel"]][valid], torch.log(out[..., COL["pt_rel"]][valid]),
                               rtol=1e-4, atol=1e-5)
    assert not out[~valid].any()  # pads stay zero in every column


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_rotation_and_smearing_leave_carried_features_and_keep_delta_r(seed: int) -> None:
    x = jets(seed)
    gen = torch.Generator().manual_seed(seed)
    for out in (rotate(x, gen), smear(x, gen, 0.05, cols=COLS)):
        torch.testing.assert_close(out[..., CARRIED], x[..., CARRIED], rtol=0, atol=0)
        torch.testing.assert_close(out[..., COL["pt_rel"]], x[..., COL["pt_rel"]], rtol=0, atol=0)
        _consistent(out)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_split_copies_carried_features_and_conserves_pt(seed: int) -> None:
    x = jets(seed)
    out = collinear_split(x, torch.Generator().manual_seed(seed), cols=COLS)
    torch.testing.assert_close(out[..., COL["pt_rel"]].sum(1), x[..., COL["pt_rel"]].sum(1), rtol=1e-5, atol=1e-6)
    _consistent(out)
    for i in range(x.shape[0]):  # every particle after the split carries the properties of one before it
        before = {tuple(np.round(row, 6)) for row in x[i][x[i, :, COL["valid"]] > 0.5][:, CARRIED].numpy()}
        after = {tuple(np.round(row, 6)) for row in out[i][out[i, :, COL["valid"]] > 0.5][:, CARRIED].numpy()}
        assert after <= before
        # a daughter sits at its parent's position: the (eta, phi, carried) of each particle existed before
        where = {tuple(np.round(row, 5)) for row in x[i][:, [COL["eta_rel"], COL["phi_rel"], *CARRIED]].numpy()}
        now = out[i][out[i, :, COL["valid"]] > 0.5][:, [COL["eta_rel"], COL["phi_rel"], *CARRIED]].numpy()
        assert {tuple(np.round(row, 5)) for row in now} <= where


def test_a_full_view_keeps_every_rule() -> None:
    x = jets(7, b=32)
    out = augment(x, torch.Generator().manual_seed(7), AugmentConfig(), COLS)
    _consistent(out)
    torch.testing.assert_close(out[..., COL["pt_rel"]].sum(1), x[..., COL["pt_rel"]].sum(1), rtol=1e-5, atol=1e-6)
