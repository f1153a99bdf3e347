"""The notebook API's own parts (the verbs run end to end in tests/test_notebook.py): configs, the encoder on
numpy and awkward jets, cheap imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jbot
from jbot.errors import JbotError
from jbot.evaluate.embed import embed
from jbot.train.checkpoint import load_model
from tests.conftest import fake_jets, tiny_checkpoint


def test_import_jbot_loads_neither_torch_nor_mlflow() -> None:
    code = "import sys, jbot\nprint(jbot.__version__, 'torch' in sys.modules, 'mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [jbot.__version__, "False", "False"]
    assert {"pretrain", "probe", "detect_anomalies", "load_encoder", "make_config"} <= set(dir(jbot))
    with pytest.raises(AttributeError, match="no attribute 'pretrian'"):
        jbot.pretrian  # noqa: B018


def test_make_config_takes_set_strings_fields_and_data(tmp_path: Path) -> None:
    cfg = jbot.make_config("jbot-s-cpu", "pretrain.epochs=3", data=tmp_path, pretrain__batch_size=64,
                           tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert (cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.data.dir) == (3, 64, str(tmp_path))
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(ValueError, match="pretrain.epoch"):
        jbot.make_config(None, "pretrain.epoch=3")
    with pytest.raises(TypeError, match="give a data folder as data="):
        jbot.load_split(str(tmp_path))  # type: ignore[arg-type]  # the folder given where the config goes


def test_encoder_embeds_numpy_of_any_float_and_awkward_jetclass_branches(tmp_path: Path) -> None:
    ak = pytest.importorskip("awkward", reason="install the jetclass extra")
    enc = jbot.load_encoder(tiny_checkpoint(tmp_path / "c.pt", 1))
    x = fake_jets(8, 1, np.random.default_rng(0))[0]
    expected = embed(load_model(tmp_path / "c.pt").encoder, x)[0]
    assert enc.features == ("eta_rel", "phi_rel", "pt_rel", "valid") and enc.dim == 16
    np.testing.assert_allclose(enc.embed(x.astype(np.float64)), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(JbotError, match=r"expected jets \(N, P, 4\) with columns eta_rel, phi_rel, pt_rel, valid"):
        enc.embed(x[0])
    with pytest.raises(JbotError, match="use embed"):
        enc.predict(x)

    # the same jets as JetClass branches: pT from px, py; pt_rel against jet_pt; eta/phi as deta/dphi
    valid = x[..., 3] > 0
    phi = np.linspace(0, 2 * np.pi, x.shape[1], endpoint=False)
    jet_pt = np.full(len(x), 500.0)
    pt = x[..., 2] * jet_pt[:, None]
    branches = {"part_px": pt * np.cos(phi), "part_py": pt * np.sin(phi), "part_deta": x[..., 0],
                "part_dphi": x[..., 1]}
    jagged = ak.zip({k: ak.Array([row[v] for row, v in zip(a, valid, strict=True)]) for k, a in branches.items()})
    jets = ak.with_field(jagged, jet_pt, "jet_pt")
    np.testing.assert_allclose(enc.embed(jets), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(JbotError, match="lack the branch jet_pt \\(the encoder reads part_deta"):
        enc.embed(jagged)
