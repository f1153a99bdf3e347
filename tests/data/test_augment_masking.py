"""Property tests of the augmentations (docs/method.md §2) and pT-aware masking (docs/method.md §3)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from jbot.config import AugmentConfig, MaskConfig
from jbot.data.augment import augment, collinear_split, rotate, smear
from jbot.data.masking import mask_from_order, pt_aware_mask
from tests.conftest import jet_batch


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_rotation_and_smearing_leave_pads_alone() -> None:
    x = jet_batch()
    pads = x[..., 3] == 0
    for out in (rotate(x, _gen()), smear(x, _gen(), 1e-4)):
        assert torch.all(out[pads] == 0)
        torch.testing.assert_close(out[..., 2:], x[..., 2:])
    r = rotate(x, _gen())
    torch.testing.assert_close(r[..., :2].norm(dim=-1), x[..., :2].norm(dim=-1))  # a rotation keeps radii
    s = smear(x, _gen(), 1e-4)
    assert torch.all(s[..., 1].abs() <= torch.pi)


def test_split_conserves_pt_and_only_fills_empty_slots() -> None:
    x = jet_batch()
    out = collinear_split(x, _gen())
    torch.testing.assert_close(out[..., 2].sum(1), x[..., 2].sum(1))
    valid_before, valid_after = x[..., 3] > 0.5, out[..., 3] > 0.5
    assert torch.all(valid_after[valid_before]), "no valid particle disappears"
    n_valid, n_empty = valid_before.sum(1), (~valid_before).sum(1)
    assert torch.equal(valid_after.sum(1), n_valid + torch.minimum(n_valid, n_empty))
    torch.testing.assert_close(out[0], x[0])  # a full jet is untouched
    # daughters sit at their parent's (eta, phi)
    new = valid_after & ~valid_before
    for b in range(x.shape[0]):
        parents = {tuple(row) for row in x[b, valid_before[b], :2].tolist()}
        assert {tuple(row) for row in out[b, new[b], :2].tolist()} <= parents
    truncated = collinear_split(x, _gen(), conserve=False)
    assert torch.equal(truncated[..., 3], x[..., 3]) and torch.all(truncated[..., 2] <= x[..., 2])


def test_views_differ_and_are_reproducible() -> None:
    x = jet_batch()
    cfg = AugmentConfig()
    g = _gen(3)
    a, b = augment(x, g, cfg), augment(x, g, cfg)
    assert not torch.equal(a, b)
    torch.testing.assert_close(augment(x, _gen(3), cfg), a)


@settings(max_examples=60, deadline=None)
@given(
    pts=st.lists(st.floats(1e-3, 1.0), min_size=1, max_size=12),
    ratio=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    pads=st.integers(0, 6),
)
def test_mask_is_closest_to_target(pts: list[float], ratio: float, seed: int, pads: int) -> None:
    n = len(pts)
    P = n + pads
    pt = torch.zeros(1, P, dtype=torch.float64)
    pt[0, :n] = torch.tensor(pts, dtype=torch.float64)
    valid = torch.zeros(1, P, dtype=torch.bool)
    valid[0, :n] = True
    rng = np.random.default_rng(seed)
    order = torch.as_tensor(np.concatenate([rng.permutation(n), np.arange(n, P)]))[None, :]
    masked = mask_from_order(pt, valid, torch.tensor([ratio], dtype=torch.float64), order)
    count = int(masked.sum())
    assert not masked[~valid].any(), "pads are never masked"
    # the masked set is a prefix of the order
    assert set(order[0, :count].tolist()) == set(torch.nonzero(masked[0]).flatten().tolist())
    if ratio == 0:
        assert count == 0
        return
    if n >= 2:
        assert 1 <= count <= n - 1
    target = ratio * sum(pts)
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(pts)[order[0, :n].numpy()])])
    lo, hi = (1, n - 1) if n >= 2 else (0, 0)
    best = min(abs(prefix[c] - target) for c in range(lo, hi + 1))
    assert abs(prefix[count] - target) <= best + 1e-12


def test_mask_on_batch() -> None:
    x = jet_batch(256)
    masked = pt_aware_mask(x, MaskConfig(ratio_min=0.2, ratio_max=0.5), _gen())
    valid = x[..., 3] > 0.5
    assert not masked[~valid].any()
    assert torch.all(masked.sum(1) >= 1) and torch.all((valid & ~masked).sum(1) >= 1)
    frac = (x[..., 2] * masked).sum(1) / (x[..., 2] * valid).sum(1)
    assert 0.2 < float(frac.mean()) < 0.5
    assert not pt_aware_mask(x, MaskConfig(enabled=False), _gen()).any()
    assert not pt_aware_mask(x, MaskConfig(prob=0.0), _gen()).any()
