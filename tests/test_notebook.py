"""examples/quickstart.ipynb runs top to bottom (tiny sizes, a kernel of this environment): pre-train, probe,
embed, t-SNE, register, anomaly from the registry — the notebook API as a user meets it. Its jets are written here
in the generator's layout (the generate cell then skips: Pythia8 would take a minute and a half on 2 cores, and
tests/data/test_generate.py covers it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT, write_fake_folder

nbformat = pytest.importorskip("nbformat", reason="install the dev extra")
nbclient = pytest.importorskip("nbclient", reason="install the dev extra")

pytestmark = pytest.mark.integration

TINY = ("model.d_model=16 model.n_heads=2 model.n_layers=1 model.d_proj=8 pretrain.knn_val_size=100 "
        "pretrain.knn_every=1 data.n_train=300 data.n_val=100 data.n_test=200 evaluate.n_folds=2 "
        "probe.silhouette_samples=100 anomaly.reference_size=100 anomaly.knn_k=5 anomaly.cosine_k=5 "
        "anomaly.gmm_components=2")


def test_quickstart_notebook_runs_and_tracks_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "quickstart"
    monkeypatch.setenv("JBOT_QUICKSTART_DIR", str(work))
    write_fake_folder(work / "jets", {"q": 600, "g": 600, "t": 200, "w": 200, "z": 200})
    monkeypatch.setenv("JBOT_QUICKSTART_EPOCHS", "1")
    monkeypatch.setenv("JBOT_QUICKSTART_SET", TINY)
    for key in ("MLFLOW_TRACKING_URI", "JBOT_HOME"):
        monkeypatch.delenv(key, raising=False)
    nb = nbformat.read(PROJECT_ROOT / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env={**os.environ})
    printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "k-NN" in printed and "registered quickstart-encoder version 1 (@champion)" in printed, printed
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for o in cell.get("outputs", []))  # the t-SNE figure
    assert (work / "anomaly").is_dir() and any((work / "anomaly").glob("*.html"))

    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    store = MlflowClient(uri, registry_uri=uri)  # not the registry an earlier test of this process set
    kinds = {e.name: len(store.search_runs([e.experiment_id])) for e in store.search_experiments()
             if e.name.startswith("jbot-")}
    assert kinds == {"jbot-pretrain": 2, "jbot-probe": 1, "jbot-anomaly": 1}, kinds
    card = store.get_model_version("quickstart-encoder", "1")
    assert "preset qg" in card.description and "**Input**" in card.description
