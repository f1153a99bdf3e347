"""Parity with the authors' published Keras checkpoints (docs/method.md §9) through `jbot import-keras` + `jbot embed`."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.model.keras_import import KerasImportError, import_keras, read_backbone
from tests.conftest import KERAS_FIXTURES

# A copy of some of the authors' released weights and golden outputs (computed with their Keras code)
REF = KERAS_FIXTURES
runner = CliRunner()

CASES = [
    ("golden_all_backbone_pretrain_32_4_2.npz", "all_backbone_pretrain_32_4_2.weights.h5", None),
    ("golden_all_ft_64_6_4.npz", "all_backbone_ft_64_6_4.weights.h5", "all_mlp_ft_64_6_4.weights.h5"),
]


@pytest.mark.parametrize(("golden", "backbone", "classifier"), CASES)
def test_parity(tmp_path: Path, golden: str, backbone: str, classifier: str | None) -> None:
    ckpt = tmp_path / "imported.pt"
    args = ["import-keras", str(REF / backbone), "--out", str(ckpt)]
    if classifier:
        args += ["--classifier", str(REF / classifier)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", "--model", str(ckpt), "--input", str(REF / golden), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    want, got = np.load(REF / golden), np.load(out)
    assert np.abs(got["cls"] - want["cls"]).max() <= 1e-4
    assert np.abs(got["particles"] - want["particles"]).max() <= 1e-4
    if classifier:
        assert np.abs(got["probs"] - want["probs"]).max() <= 1e-4
    else:
        assert "probs" not in got.files


def test_architecture_inferred_from_shapes() -> None:
    cfg, _ = read_backbone(REF / "all_backbone_ft_64_6_4.weights.h5")
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.mask_padding) == (64, 6, 4, False)
    cfg, _ = read_backbone(REF / "all_backbone_pretrain_32_4_2.weights.h5")
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers) == (32, 4, 2)


def test_bad_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(KerasImportError, match="not a Keras weights file"):
        import_keras(junk)
    other = tmp_path / "other.weights.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(KerasImportError, match="no 'layers' group"):
        import_keras(other)
    truncated = tmp_path / "all_backbone_pretrain_32_4_2.weights.h5"
    data = (REF / "all_backbone_pretrain_32_4_2.weights.h5").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(KerasImportError, match="truncated|not a Keras weights file|cannot be read"):
        import_keras(truncated)
    renamed = tmp_path / "all_backbone_pretrain_64_6_4.weights.h5"
    shutil.copy(REF / "all_backbone_pretrain_32_4_2.weights.h5", renamed)
    with pytest.raises(KerasImportError, match=r"file name says D, H, L = \(64, 6, 4\), the weights hold \(32, 4, 2\)"):
        import_keras(renamed)
    with pytest.raises(KerasImportError, match=r"'layers/dense_2/vars/0' has shape \(32, 5\), expected \(64, C\)"):
        import_keras(REF / "all_backbone_ft_64_6_4.weights.h5", REF / "all_mlp_ft_32_4_2.weights.h5")
    bad_shape = tmp_path / "bad.weights.h5"
    shutil.copy(REF / "all_backbone_pretrain_32_4_2.weights.h5", bad_shape)
    with h5py.File(bad_shape, "a") as f:
        del f["layers/transformer_block_1/ln1/vars/0"]
        f["layers/transformer_block_1/ln1/vars/0"] = np.zeros(7, np.float32)
    with pytest.raises(KerasImportError, match=r"transformer_block_1/ln1/vars/0' has shape \(7,\), expected \(32,\)"):
        import_keras(bad_shape)


def test_embed_input_errors(tmp_path: Path) -> None:
    ckpt = tmp_path / "c.pt"
    assert runner.invoke(app, ["import-keras", str(REF / "all_backbone_pretrain_32_4_2.weights.h5"),
                               "--out", str(ckpt)]).exit_code == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros(3))
    result = runner.invoke(app, ["embed", "--model", str(ckpt), "--input", str(bad), "--out", str(tmp_path / "o.npz")])
    assert result.exit_code == 2 and "no array 'x'" in result.output
    np.savez(bad, x=np.zeros((4, 20, 4), np.float32))
    result = runner.invoke(app, ["embed", "--model", str(ckpt), "--input", str(bad), "--out", str(tmp_path / "o.npz")])
    assert result.exit_code == 2 and "expected (N, 30, 4)" in result.output


@pytest.mark.integration
def test_probe_and_finetune_from_imported_checkpoints(fake_data: Path, tmp_path: Path) -> None:
    sizes = ["--set", "data.n_train=400", "--set", "data.n_val=100", "--set", "data.n_test=200"]
    backbone, classifier = tmp_path / "s.pt", tmp_path / "b-classifier.pt"
    assert runner.invoke(app, ["import-keras", str(REF / "all_backbone_pretrain_32_4_2.weights.h5"),
                               "--out", str(backbone)]).exit_code == 0
    assert runner.invoke(app, ["import-keras", str(REF / "all_backbone_ft_64_6_4.weights.h5"), "--classifier",
                               str(REF / "all_mlp_ft_64_6_4.weights.h5"), "--out", str(classifier)]).exit_code == 0
    for ckpt in (backbone, classifier):
        result = runner.invoke(app, ["probe", "--model", str(ckpt), "--data", str(fake_data), "--device", "cpu",
                                     *sizes])
        assert result.exit_code == 0, result.output
        assert "k-NN" in result.output and "purity" in result.output
    result = runner.invoke(app, ["finetune", "--model", str(classifier), "--data", str(fake_data), "--device", "cpu",
                                 "--out", str(tmp_path / "ft"), *sizes, "--set", "finetune.epochs=1",
                                 "--set", "finetune.batch_size=64"])
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("jbot-finetune").experiment_id],
                                filter_string="tags.`jbot.continued_head` = 'true'")
    assert run.data.params["model.n_heads"] == "6" and run.data.params["model.mask_padding"] == "False"
    assert "test/acc" in run.data.metrics
