"""ONNX export: ONNX Runtime's outputs equal `jbot embed`'s on generated jets, for an encoder and a classifier,
at a batch size the graph was not traced with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import GenerateConfig
from jbot.data.jetnet import read_jetnet
from tests.conftest import KERAS_FIXTURES

ort = pytest.importorskip("onnxruntime", reason="install the export extra: pip install 'jbot-hep[export]'")
pytest.importorskip("pythia8mc", reason="install the generate extra: pip install 'jbot-hep[generate]'")
runner = CliRunner()
KERAS = KERAS_FIXTURES


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jbot.data.generate import generate

    folder = tmp_path_factory.mktemp("generated")
    return generate(GenerateConfig(classes=("t",), jets_per_class=37, chunk_size=37, seed=5), folder)["t"]


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_onnx_runtime_matches_embed(kind: str, generated: Path, tmp_path: Path) -> None:
    from tests.conftest import tiny_checkpoint

    if kind == "encoder":
        model = tiny_checkpoint(tmp_path / "enc.pt", 0)
    else:
        model = tmp_path / "clf.pt"
        imported = runner.invoke(app, ["import-keras", str(KERAS / "all_backbone_ft_64_6_4.weights.h5"),
                                       "--classifier", str(KERAS / "all_mlp_ft_64_6_4.weights.h5"), "--out",
                                       str(model)])
        assert imported.exit_code == 0, imported.output
    onnx_file = tmp_path / "model.onnx"
    exported = runner.invoke(app, ["export", "--model", str(model), "--format", "onnx", "--out", str(onnx_file)])
    assert exported.exit_code == 0, exported.output
    embedded = runner.invoke(app, ["embed", "--model", str(model), "--input", str(generated), "--out",
                                   str(tmp_path / "emb.npz")])
    assert embedded.exit_code == 0, embedded.output
    reference = np.load(tmp_path / "emb.npz")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == (["cls", "particles", "probs"] if kind == "classifier" else ["cls", "particles"])
    jets = read_jetnet(generated).particles  # 37 jets: not the batch the graph was traced with
    outputs = dict(zip(names, session.run(None, {"jets": jets}), strict=True))
    for name in names:
        assert outputs[name].shape == reference[name].shape
        np.testing.assert_allclose(outputs[name], reference[name], atol=1e-4, rtol=1e-4, err_msg=name)


def test_export_errors_are_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--model", "missing.pt", "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and result.output.startswith("error: --model missing.pt")
    result = runner.invoke(app, ["export", "--model", "missing.pt", "--format", "tflite", "--out", "x"])
    assert result.exit_code == 2 and "only onnx" in result.output
