"""Every bad-input case of the data layer raises one DataError naming the file, the dataset and the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from jbot.data.jetnet import DataError, read_jetnet, write_jetnet
from jbot.data.readers import load_classes
from jbot.data.splits import make_split
from tests.conftest import fake_jets, write_fake_folder


def _good(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    return fake_jets(n, 2, np.random.default_rng(1))


def test_roundtrip(tmp_path: Path) -> None:
    p, j = _good()
    path = write_jetnet(tmp_path / "w.hdf5", p, j)
    back = read_jetnet(path)
    np.testing.assert_array_equal(back.particles, p)
    np.testing.assert_array_equal(back.jets, j)
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp file"


def _raw(path: Path, particles: np.ndarray | None, jets: np.ndarray | None) -> Path:
    with h5py.File(path, "w") as f:
        if particles is not None:
            f.create_dataset("particle_features", data=particles)
        if jets is not None:
            f.create_dataset("jet_features", data=jets)
    return path


def _with(change: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray | None, np.ndarray | None]]):
    def build(path: Path) -> Path:
        p, j = _good()
        return _raw(path, *change(p.copy(), j.copy()))
    return build


def _nan(p: np.ndarray, j: np.ndarray):
    p[3, 0, 0] = np.nan
    p[7, 1, 1] = np.inf
    return p, j


def _jet_nan(p: np.ndarray, j: np.ndarray):
    j[2, 2] = np.nan
    return p, j


def _flag(p: np.ndarray, j: np.ndarray):
    p[0, 0, 3] = 0.5
    return p, j


def _pad(p: np.ndarray, j: np.ndarray):
    p[1, -1, 0] = 0.3  # last slot is padded in every fake jet of class 2
    p[4, -1, 2] = 0.1
    return p, j


def _pt(p: np.ndarray, j: np.ndarray):
    p[5, 0, 2] = -0.1
    return p, j


CASES = [
    ("missing key", _with(lambda p, j: (p, None)), r"missing dataset 'jet_features'"),
    ("missing particles", _with(lambda p, j: (None, j)), r"missing dataset 'particle_features'"),
    ("wrong shape", _with(lambda p, j: (p[..., 0], j)), r"'particle_features' has shape \(20, 30\), expected \(N, P, 4\)"),
    ("wrong features", _with(lambda p, j: (p[..., :3], j)), r"has shape \(20, 30, 3\)"),
    ("jet shape", _with(lambda p, j: (p, j[:, :3])), r"'jet_features' has shape \(20, 3\)"),
    ("length mismatch", _with(lambda p, j: (p, j[:10])), r"'jet_features' has 10 jets but 'particle_features' has 20"),
    ("wrong dtype", _with(lambda p, j: (p.astype(np.int64), j)), r"'particle_features' has dtype int64, expected floating"),
    ("nan", _with(_nan), r"'particle_features': NaN or inf values in 2 of 20 jets \(first at index 3\)"),
    ("jet nan", _with(_jet_nan), r"'jet_features': NaN or inf values in 1 of 20 jets"),
    ("valid flag", _with(_flag), r"'valid' flag not 0 or 1 in 1 of 20 jets"),
    ("pads", _with(_pad), r"non-zero features in padded slots \(valid = 0\) in 2 of 20 jets"),
    ("pt", _with(_pt), r"pT_rel <= 0 on valid slots in 1 of 20 jets \(first at index 5\)"),
    ("empty", _with(lambda p, j: (p[:0], j[:0])), r"'particle_features' is empty \(0 jets\)"),
]


@pytest.mark.parametrize(("name", "build", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_file(tmp_path: Path, name: str, build, message: str) -> None:
    path = build(tmp_path / "w.hdf5")
    with pytest.raises(DataError, match=message) as info:
        read_jetnet(path)
    assert str(path) in str(info.value)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "q.hdf5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(DataError, match=r"q.hdf5: not a readable HDF5 file \(corrupt or truncated\?\)"):
        read_jetnet(path)


def test_truncated(tmp_path: Path) -> None:
    p, j = fake_jets(2000, 0, np.random.default_rng(0))
    path = write_jetnet(tmp_path / "q.hdf5", p, j)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"q.hdf5: (not a readable HDF5 file|dataset '\w+' cannot be read)"):
        read_jetnet(path)


def test_missing_file_and_class(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_jetnet(tmp_path / "nope.hdf5")
    with pytest.raises(DataError, match="data folder not found"):
        load_classes(tmp_path / "absent", ("q",))
    write_fake_folder(tmp_path, 10, classes=("q", "g"))
    with pytest.raises(DataError, match=r"w.hdf5: missing file for class 'w' \(the folder holds g.hdf5, q.hdf5\)"):
        load_classes(tmp_path, ("q", "g", "w"))


def test_too_few_jets_for_preset(tmp_path: Path) -> None:
    write_fake_folder(tmp_path, 30)
    with pytest.raises(DataError, match=r"preset 5class: class 'q' has 30 jets, the split asks for 60"):
        make_split(tmp_path, "5class", n_train=200, n_val=50, n_test=50)
