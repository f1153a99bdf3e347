"""Presets as data: the registry is what the config accepts, the published presets split as before, JetClass on a
subset of its channels (ROOT or parquet alike), and a user's preset file; bad presets are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jbot.config import ConfigError, load_config
from jbot.data.jetnet import DataError
from jbot.data.presets import PRESETS, PresetError, for_anomaly, get_preset, groups
from jbot.data.splits import make_split
from tests.conftest import write_fake_folder, write_jetclass_folder

pytest.importorskip("uproot")
CHANNELS = ("ZJetsToNuNu", "HToBB", "TTBar")


def test_config_accepts_exactly_the_registry() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.preset=nope"])
    assert f"choose from {', '.join(PRESETS)}" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["finetune.task=qg"])  # an anomaly split trains on no signal: no classification task
    classify = [n for n, p in PRESETS.items() if p.split == "balanced"]
    assert f"choose from {', '.join(classify)}" in str(info.value)
    for name in PRESETS:
        assert load_config(None, [f"data.preset={name}"]).data.preset == name


def test_published_presets_split_as_the_paper_does(tmp_path: Path) -> None:
    write_fake_folder(tmp_path, 300)
    five = make_split(tmp_path, "5class", n_train=100, n_val=50, n_test=50)
    assert np.bincount(five.train.origin).tolist() == [20] * 5
    tqg = make_split(tmp_path, "tqg", n_train=100, n_val=40, n_test=40)
    assert tqg.class_names == ("qcd", "top")
    assert np.bincount(tqg.train.y).tolist() == [50, 50]  # top half of every set, q and g a quarter each
    assert np.bincount(tqg.train.origin, minlength=5).tolist() == [25, 25, 0, 0, 50]
    qg = make_split(tmp_path, "qg", n_train=100, n_val=50, n_test=50)
    assert set(np.unique(qg.train.origin)) == {0, 1}  # background alone in training
    assert groups(qg.spec).columns == ("W", "Z", "t", "combined")


@pytest.mark.parametrize("suffix", [".root", ".parquet"])
def test_jetclass_preset_on_the_channels_present(tmp_path: Path, suffix: str) -> None:
    write_jetclass_folder(tmp_path, 120, CHANNELS, suffix)
    split = make_split(tmp_path, "jetclass", n_train=150, n_val=30, n_test=60, n_particles=20,
                       features=("eta_rel", "phi_rel", "pt_rel", "charge"))
    assert split.class_names == ("QCD", "Hbb", "Tbqq")
    assert split.train.x.shape == (150, 20, 5)
    assert np.bincount(split.train.y).tolist() == [50, 50, 50]
    anomaly = make_split(tmp_path, "jetclass", n_train=60, n_val=20, n_test=30, anomaly=True)
    assert set(np.unique(anomaly.train.origin)) == {0}  # QCD alone
    assert groups(anomaly.spec).columns == ("Hbb", "Tbqq", "combined")


def test_root_and_parquet_folders_split_alike(tmp_path: Path) -> None:
    a = make_split(write_jetclass_folder(tmp_path / "root", 80, CHANNELS, ".root"), "jetclass", n_train=90,
                   n_val=15, n_test=30)
    b = make_split(write_jetclass_folder(tmp_path / "pq", 80, CHANNELS, ".parquet"), "jetclass", n_train=90,
                   n_val=15, n_test=30)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)


def test_a_user_preset_file(tmp_path: Path) -> None:
    data = write_jetclass_folder(tmp_path / "jets", 100, CHANNELS)
    preset = tmp_path / "resonances.yaml"
    preset.write_text("dataset: jetclass\nclasses: {ZJetsToNuNu: QCD, HToBB: resonance, TTBar: resonance}\n"
                      "background: [ZJetsToNuNu]\n")
    split = make_split(data, str(preset), n_train=120, n_val=30, n_test=40)
    assert split.preset == "resonances" and split.class_names == ("QCD", "resonance")
    assert np.bincount(split.train.y).tolist() == [60, 60]  # Hbb and top share the resonance label's half
    assert np.bincount(split.train.origin, minlength=10)[[0, 1, 8]].tolist() == [60, 30, 30]
    assert groups(for_anomaly(get_preset(str(preset)))).columns == ("resonance", "combined")
    cfg = load_config(None, [f"data.preset={preset}", f"finetune.task={preset}"])
    assert cfg.data.preset == str(preset)


@pytest.mark.parametrize(("text", "message"), [
    ("classes: [a, b]", r"'classes' must map at least two file keys to labels"),
    ("classes: {ZJetsToNuNu: QCD, Hbb: H}", r"class 'Hbb' is not a jetclass class; choose from ZJetsToNuNu"),
    ("classes: {ZJetsToNuNu: QCD, HToBB: QCD}", r"the classes map to one label"),
    ("classes: {ZJetsToNuNu: QCD, HToBB: H}\nbackground: [TTBar]", r"background 'TTBar' is not one of its classes"),
    ("classes: {ZJetsToNuNu: QCD, HToBB: H}\nlabels: 3", r"unknown key 'labels'"),
    ("dataset: cms\nclasses: {q: q, g: g}", r"dataset 'cms'; choose from jetnet, jetclass"),
    ("classes: {q: q, g: g}\ndataset: jetnet\nsizes: [1, 2]", r"'sizes' must be three integers \(train, val, test\), train and val positive"),
    (": : :", r"not a YAML preset"),
])
def test_bad_preset_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(PresetError, match=message) as info:
        get_preset(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_preset_without_background_has_no_anomaly_split(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("classes: {HToBB: Hbb, TTBar: top}\n")
    with pytest.raises(PresetError, match="declares no background classes"):
        for_anomaly(get_preset(str(path)))
    with pytest.raises(DataError, match=r"preset jetclass needs files of at least two of its classes"):
        make_split(write_jetclass_folder(tmp_path / "one", 20, ("HToBB",)), "jetclass")


def test_anomaly_presets_for_jetclass_and_in_files(tmp_path: Path) -> None:
    data = write_jetclass_folder(tmp_path / "jets", 100, CHANNELS)
    qcd = make_split(data, "jetclass-qcd", n_train=60, n_val=20, n_test=20)
    assert set(np.unique(qcd.train.origin)) == {0}  # pre-training on QCD alone
    assert groups(qcd.spec).columns == ("Hbb", "Tbqq", "combined")
    path = tmp_path / "bb.yaml"
    path.write_text("classes: {ZJetsToNuNu: QCD, HToBB: Hbb}\nbackground: [ZJetsToNuNu]\nsplit: anomaly\n")
    assert set(np.unique(make_split(data, str(path), n_train=50, n_val=10, n_test=10).train.origin)) == {0}
    path.write_text("classes: {ZJetsToNuNu: QCD, HToBB: Hbb}\nsplit: anomaly\n")
    with pytest.raises(PresetError, match="an anomaly split trains on the background"):
        get_preset(str(path))
    signals = write_jetclass_folder(tmp_path / "signals", 20, ("HToBB", "TTBar"))
    with pytest.raises(DataError, match=r"preset jetclass: none of its background classes \(ZJetsToNuNu\) has files"):
        make_split(signals, "jetclass", anomaly=True)


def test_one_file_in_two_formats_is_refused(tmp_path: Path) -> None:
    data = write_jetclass_folder(tmp_path, 20, CHANNELS)
    write_jetclass_folder(tmp_path, 20, ("HToBB",), ".parquet")
    with pytest.raises(DataError, match=r"HToBB_000.parquet, HToBB_000.root are one file in two formats"):
        make_split(data, "jetclass")
