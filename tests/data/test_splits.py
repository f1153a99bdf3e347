from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jbot.data.splits import make_split
from tests.conftest import write_fake_folder


def _ids(part) -> set[bytes]:
    """Identify jets by their bytes (the fake generator makes every jet distinct)."""
    return {row.tobytes() for row in part.x}


def test_5class_sizes_balance_disjoint(fake_data: Path) -> None:
    s = make_split(fake_data, "5class", n_train=1000, n_val=250, n_test=500, seed=42)
    assert (len(s.train), len(s.val), len(s.test)) == (1000, 250, 500)
    for part, n in ((s.train, 200), (s.val, 50), (s.test, 100)):
        assert np.bincount(part.y, minlength=5).tolist() == [n] * 5
        np.testing.assert_array_equal(part.y, part.origin)
    a, b, c = _ids(s.train), _ids(s.val), _ids(s.test)
    assert len(a) == 1000 and not (a & b) and not (a & c) and not (b & c)
    assert s.class_names == ("q", "g", "W", "Z", "t")


def test_deterministic_by_seed(fake_data: Path) -> None:
    a = make_split(fake_data, "5class", n_train=500, n_val=100, n_test=200, seed=7)
    b = make_split(fake_data, "5class", n_train=500, n_val=100, n_test=200, seed=7)
    c = make_split(fake_data, "5class", n_train=500, n_val=100, n_test=200, seed=8)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert _ids(a.train) != _ids(c.train)


def test_test_set_stable_when_train_size_changes(fake_data: Path) -> None:
    small = make_split(fake_data, "5class", n_train=500, n_val=100, n_test=200)
    large = make_split(fake_data, "5class", n_train=1200, n_val=100, n_test=200)
    assert _ids(small.test) == _ids(large.test)


def test_auto_sizes_scale_published(fake_data: Path) -> None:
    s = make_split(fake_data, "5class")  # 400 per class: published 140k/10k/19k per class scaled down
    per = [len(p) // 5 for p in (s.train, s.val, s.test)]
    assert per == [int(140_000 * 400 / 169_000), int(10_000 * 400 / 169_000), int(19_000 * 400 / 169_000)]


def test_tqg(fake_data: Path) -> None:
    s = make_split(fake_data, "tqg", n_train=400, n_val=80, n_test=200)
    assert (len(s.train), len(s.val), len(s.test)) == (400, 80, 200)
    for part in (s.train, s.val, s.test):
        assert part.y.mean() == 0.5  # top = 50 %
        assert np.bincount(part.origin, minlength=5)[[0, 1]].tolist() == [len(part) // 4] * 2
        np.testing.assert_array_equal(part.y, (part.origin == 4).astype(int))
    assert s.class_names == ("qcd", "top")
    assert not (_ids(s.train) & _ids(s.test))


def test_qg_background_only_training(tmp_path: Path) -> None:
    write_fake_folder(tmp_path, {"q": 300, "g": 320, "w": 400, "z": 400, "t": 400})
    s = make_split(tmp_path, "qg", n_train=400, n_val=40, seed=3)
    assert set(np.unique(s.train.origin)) == {0, 1}
    assert np.bincount(s.train.origin).tolist() == [200, 200]
    counts = np.bincount(s.test.origin, minlength=5)
    # remaining q and g in equal counts (q: 300 - 200 - 20 = 80), the same count of each of W, Z, t
    assert counts.tolist() == [80] * 5
    assert set(np.unique(s.test.origin)) == {0, 1, 2, 3, 4}
    assert np.bincount(s.val.origin, minlength=5).tolist() == [20] * 5
    assert not (_ids(s.train) & _ids(s.test)) and not (_ids(s.val) & _ids(s.test))


def test_unknown_preset(fake_data: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        make_split(fake_data, "7class")
