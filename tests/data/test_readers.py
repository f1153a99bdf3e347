"""Readers by format: JetClass ROOT and parquet files (written here in JetClass's layout) with every declared feature,
JetNet-layout HDF5 with its derived features, and the one-line errors of each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jbot.config import ConfigError, load_config
from jbot.data.features import FEATURES, layout
from jbot.data.info import summarize
from jbot.data.jetnet import DataError
from jbot.data.readers import READERS, load_classes, read_jets
from jbot.data.shards import find_shards, read_rows
from tests.conftest import write_fake_folder, write_jetclass

pytest.importorskip("uproot")
ALL = tuple(FEATURES)  # every feature jbot knows, the paper's three first


@pytest.fixture(scope="module")
def jetclass_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The same 60 jets as ROOT and as parquet, some with more than 40 particles."""
    folder = tmp_path_factory.mktemp("jetclass")
    truth = write_jetclass(folder / "HToBB_000.root", 60, seed=5, cls_index=1, max_count=70)
    write_jetclass(folder / "HToBB_000.parquet", 60, seed=5, cls_index=1, max_count=70)
    return folder / "HToBB_000.root", folder / "HToBB_000.parquet", truth


def test_root_and_parquet_give_every_feature_the_same(jetclass_files: tuple[Path, Path, dict]) -> None:
    root, parquet, truth = jetclass_files
    a, b = read_jets(root, 40, ALL), read_jets(parquet, 40, ALL)
    assert a.particles.shape == (60, 40, len(ALL) + 1)
    np.testing.assert_array_equal(a.particles, b.particles)
    np.testing.assert_array_equal(a.jets, b.jets)
    col = {name: i for i, name in enumerate(layout(ALL))}
    x = a.particles
    # the first jet, by hand: pT-ordered, its hardest particle's columns from its own branches
    n0 = int(truth["counts"][0])
    pt = truth["pt"][:n0]
    hardest = int(np.argmax(pt))
    assert x[0, :, col["valid"]].sum() == min(n0, 40)
    assert np.all(np.diff(x[0, :min(n0, 40), col["pt_rel"]]) <= 0)
    assert x[0, 0, col["pt_rel"]] == pytest.approx(pt[hardest] / truth["jet_pt"][0], rel=1e-5)
    assert x[0, 0, col["log_e"]] == pytest.approx(np.log(truth["energy"][hardest]), rel=1e-5)
    assert x[0, 0, col["log_e_rel"]] == pytest.approx(np.log(truth["energy"][hardest] / truth["jet_energy"][0]),
                                                      rel=1e-5, abs=1e-6)
    assert x[0, 0, col["charge"]] == truth["charge"][hardest]
    assert x[0, 0, col["d0"]] == pytest.approx(truth["part_d0val"][hardest], rel=1e-5, abs=1e-7)
    valid = x[..., col["valid"]] == 1
    np.testing.assert_allclose(x[..., col["delta_r"]][valid],
                               np.hypot(x[..., col["eta_rel"]], x[..., col["phi_rel"]])[valid], rtol=1e-5)
    np.testing.assert_allclose(x[..., col["log_pt_rel"]][valid], np.log(x[..., col["pt_rel"]][valid]), rtol=1e-4,
                               atol=1e-5)
    flags = x[..., [col[f] for f in ("is_charged_hadron", "is_neutral_hadron", "is_photon", "is_electron",
                                     "is_muon")]]
    np.testing.assert_array_equal(flags.sum(-1)[valid], 1.0)  # one particle type each
    assert not x[~valid].any()  # padded slots hold zeros in every column


@pytest.mark.parametrize("n_particles", [10, 80])
def test_any_particle_count_from_jetclass(jetclass_files: tuple[Path, Path, dict], n_particles: int) -> None:
    root, _, truth = jetclass_files
    x = read_jets(root, n_particles).particles
    assert x.shape == (60, n_particles, 4)
    np.testing.assert_array_equal(x[..., 3].sum(1), np.minimum(truth["counts"], n_particles))


def test_streamed_rows_equal_the_whole_file(jetclass_files: tuple[Path, Path, dict]) -> None:
    root, parquet, _ = jetclass_files
    features = ("eta_rel", "phi_rel", "pt_rel", "charge", "is_photon")
    whole = read_jets(root, 30, features).particles
    for shard in find_shards(root.parent, features):
        x, _ = read_rows(shard, 13, 47, 30, features=features)
        np.testing.assert_array_equal(x, whole[13:47], err_msg=shard.kind)


def test_a_file_lacking_a_declared_feature_is_one_line(tmp_path: Path) -> None:
    for suffix in (".root", ".parquet"):
        path = tmp_path / f"TTBar_000{suffix}"
        write_jetclass(path, 10, seed=1, drop=("part_charge",))
        read_jets(path, 30)  # the paper's features need no charge
        with pytest.raises(DataError, match=rf"TTBar_000\{suffix}: feature 'charge' needs the branch 'part_charge'"):
            read_jets(path, 30, ("eta_rel", "phi_rel", "pt_rel", "charge"))
        path.unlink()


def test_jetnet_layout_derives_kinematic_features_and_has_no_carried_ones(tmp_path: Path) -> None:
    write_fake_folder(tmp_path, 20, classes=("q",))
    derived = ("eta_rel", "phi_rel", "pt_rel", "log_pt", "log_pt_rel", "delta_r", "log_e", "log_e_rel")
    jets = load_classes(tmp_path, ("q",), 30, derived)["q"]
    x = jets.particles
    valid = x[..., 3] == 1
    np.testing.assert_allclose(x[..., 5][valid], np.log(x[..., 2][valid]), rtol=1e-5)  # log_pt_rel
    jet_pt = np.broadcast_to(jets.jets[:, :1], valid.shape)
    np.testing.assert_allclose(x[..., 4][valid], np.log(x[..., 2][valid]) + np.log(jet_pt[valid]), rtol=1e-5)
    assert not x[~valid].any()
    assert np.isfinite(x).all()
    with pytest.raises(DataError, match=r"q.hdf5: feature 'charge' is not in a JetNet-layout file"):
        load_classes(tmp_path, ("q",), 30, ("eta_rel", "phi_rel", "pt_rel", "charge"))


def test_unknown_or_misplaced_features_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model.features: unknown particle feature 'chrg'"):
        load_config(None, ["model.features=[eta_rel,phi_rel,pt_rel,chrg]"])
    with pytest.raises(ConfigError, match=r"must start with eta_rel, phi_rel, pt_rel"):
        load_config(None, ["model.features=[charge,eta_rel,phi_rel,pt_rel]"])
    with pytest.raises(ConfigError, match=r"'charge' is listed twice"):
        load_config(None, ["model.features=[eta_rel,phi_rel,pt_rel,charge,charge]"])
    cfg = load_config(None, ["model.features=[eta_rel,phi_rel,pt_rel,charge,is_photon]"])
    assert cfg.model.n_features == 6  # the width follows the schema


def test_data_info_on_jetclass_files(tmp_path: Path) -> None:
    write_jetclass(tmp_path / "HToBB_000.root", 30, seed=1, cls_index=1)
    write_jetclass(tmp_path / "HToBB_001.parquet", 20, seed=2, cls_index=1)
    write_jetclass(tmp_path / "ZJetsToNuNu_000.parquet", 25, seed=3)
    summary = summarize(tmp_path)
    assert list(summary) == ["QCD", "Hbb"]  # JetClass's label order
    assert summary["Hbb"]["n_jets"] == 50 and summary["Hbb"]["files"] == 2
    (tmp_path / "junk").mkdir()
    empty = tmp_path / "junk"
    with pytest.raises(DataError, match="no class files found: neither JetNet's"):
        summarize(empty)


def test_an_unknown_extension_has_no_reader(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"q.csv: no reader for '.csv' files \(jbot reads .hdf5, .h5, .root, "
                                        r"\.parquet\)"):
        read_jets(tmp_path / "q.csv")
    assert set(READERS) == {".hdf5", ".h5", ".root", ".parquet"}


def test_a_bad_value_names_the_file_the_feature_and_the_row(tmp_path: Path) -> None:
    import awkward as ak

    path = tmp_path / "HToCC_000.parquet"
    write_jetclass(path, 12, seed=4)
    table = ak.from_parquet(path)
    charge = ak.to_list(table["part_charge"])
    charge[5][0] = float("nan")
    ak.to_parquet(ak.with_field(table, ak.Array(charge), "part_charge"), path)
    read_jets(path, 30)  # the paper's features do not read the charge
    with pytest.raises(DataError, match=r"HToCC_000.parquet: feature 'charge' \(from part_charge\): NaN or inf "
                                        r"values in 1 of 12 jets \(first at row 5\)"):
        read_jets(path, 30, ("eta_rel", "phi_rel", "pt_rel", "charge"))
