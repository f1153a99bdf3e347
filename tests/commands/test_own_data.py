"""One's own jets end to end through the CLI: JetClass-layout ROOT files holding a few of its channels (every
JetClass branch present), pre-training on a feature list with charge and the five particle-ID flags at 40 particles,
then ``probe --preset jetclass``, ``finetune --task jetclass``, ``anomaly --preset jetclass``, ``embed`` and
``export`` of that encoder (which carries its schema), the same jets as parquet, streamed pre-training, and a
user's preset file through pretrain -> probe -> anomaly. A mismatched input is one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.data.features import layout
from tests.conftest import TINY, NewStore, cli_ok, one_error_line, set_args, write_fake_folder, write_jetclass_folder

pytest.importorskip("uproot")
pytestmark = pytest.mark.integration
runner = CliRunner()
CHANNELS = ("ZJetsToNuNu", "HToBB", "TTBar")
FEATURES = ["eta_rel", "phi_rel", "pt_rel", "log_pt", "log_e", "delta_r", "charge", "is_charged_hadron",
            "is_neutral_hadron", "is_photon", "is_electron", "is_muon", "d0", "dz"]
SIZES = ["data.n_train=240", "data.n_val=45", "data.n_test=90"]
SMALL = ["anomaly.reference_size=60", "anomaly.gmm_components=2", "anomaly.knn_k=5", "anomaly.cosine_k=5",
         "finetune.epochs=1", "finetune.batch_size=64", "evaluate.n_folds=2", "probe.silhouette_samples=60",
         "tracking.log_system_metrics=false", "pretrain.knn_val_size=40"]
SCHEMA = [f"model.features=[{','.join(FEATURES)}]", "model.n_particles=40"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three channels, 150 jets each, as ROOT and (the same jets) as parquet."""
    root = write_jetclass_folder(tmp_path_factory.mktemp("jetclass-root"), 150, CHANNELS, ".root")
    parquet = write_jetclass_folder(tmp_path_factory.mktemp("jetclass-parquet"), 150, CHANNELS, ".parquet")
    return root, parquet


def test_jetclass_with_declared_features_end_to_end(folders: tuple[Path, Path], tmp_path: Path,
                                                    new_store: NewStore) -> None:
    ort = pytest.importorskip("onnxruntime", reason="install the export extra: pip install 'jbot-hep[export]'")
    root, parquet = folders
    store = new_store(tmp_path / "store")
    client = MlflowClient(store)
    ok = cli_ok(store)

    info = runner.invoke(app, ["data", "info", str(root), "--html", str(tmp_path / "info.html")])
    assert info.exit_code == 0 and "QCD" in info.output and "Tbqq" in info.output, info.output

    ok("pretrain", "--data", str(root), "--preset", "jetclass", "--out", str(tmp_path / "pt"),
       *set_args(TINY + SIZES + SMALL + SCHEMA))
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert pre.data.params["model.n_features"] == str(len(FEATURES) + 1)
    assert pre.data.tags["jbot.features"] == ",".join(layout(FEATURES))
    model_info = get_model_info(pre.data.tags["jbot.model_uri"])
    assert model_info.metadata["jbot.input"].startswith(f"float jets (N, 40, {len(FEATURES) + 1}): ")
    assert model_info.metadata["jbot.features"] == ",".join(layout(FEATURES))
    run = pre.info.run_id

    # the encoder carries its schema: no --set model.* needed downstream, on ROOT and on parquet alike
    ok("probe", "--run-id", run, "--data", str(root), "--preset", "jetclass", *set_args(SIZES + SMALL))
    ok("probe", "--run-id", run, "--data", str(parquet), "--preset", "jetclass", *set_args(SIZES + SMALL))
    probes = client.search_runs([client.get_experiment_by_name("jbot-probe").experiment_id])
    assert {p.data.metrics["test/knn_acc"] for p in probes} and len(probes) == 2
    a, b = (p.data.metrics["test/knn_acc"] for p in probes)
    assert a == pytest.approx(b)  # the same jets, read from either format
    ok("finetune", "--run-id", run, "--data", str(root), "--task", "jetclass", "--out", str(tmp_path / "ft"),
       *set_args(SIZES + SMALL))
    (ft,) = client.search_runs([client.get_experiment_by_name("jbot-finetune").experiment_id])
    assert ft.data.params["data.preset"] == "jetclass" and "test/acc" in ft.data.metrics
    # a fine-tuning study on it: its best trial is evaluated on the test split with the encoder's schema
    ok("sweep", "finetune", "--model", run, "--trials", "2", "--data", str(root), "--storage",
       f"sqlite:///{tmp_path / 'optuna.db'}", "--study-name", "jetclass", *set_args(SIZES + SMALL + [
           "finetune.task=jetclass"]))
    (parent,) = client.search_runs([client.get_experiment_by_name("jbot-sweep-finetune").experiment_id],
                                   "tags.`jbot.role` = 'sweep-parent'")
    assert "test/acc" in parent.data.metrics
    out = ok("anomaly", "--run-id", run, "--data", str(root), "--preset", "jetclass", "--out", str(tmp_path / "an"),
             *set_args(["data.n_train=100", "data.n_val=20", "data.n_test=30"] + SMALL))
    assert "AUC Hbb" in out and "AUC Tbqq" in out and "published" not in out
    metrics = json.loads((tmp_path / "an" / "anomaly_metrics.json").read_text())
    assert "knn/Hbb/auc" in metrics and "knn/combined/auc" in metrics and "knn/W/auc" not in metrics
    report = (tmp_path / "an" / "anomaly_report.html").read_text()
    assert "background (QCD)" in report and "Table 4" not in report

    ok("embed", "--run-id", run, "--input", str(root / "TTBar_000.root"), "--out", str(tmp_path / "emb.npz"))
    embedded = np.load(tmp_path / "emb.npz")
    assert embedded["particles"].shape == (150, 40, 16)

    ok("export", "--run-id", run, "--out", str(tmp_path / "enc.onnx"))
    import onnx

    from jbot.data.readers import read_jets
    from jbot.evaluate.embed import infer
    from jbot.tracking.models import load_from_uri

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "enc.onnx")).metadata_props}
    assert meta["jbot.features"] == ",".join(layout(FEATURES)) and meta["jbot.n_particles"] == "40"
    jets = read_jets(parquet / "HToBB_000.parquet", 40, tuple(FEATURES)).particles[:23]
    session = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    cls, _ = session.run(None, {"jets": jets})
    np.testing.assert_allclose(cls, infer(load_from_uri(run, store).encoder, jets).cls, atol=1e-4, rtol=1e-4)

    # a model trained on 15 columns given the paper's 4: one line naming both
    np.savez(tmp_path / "four.npz", x=np.zeros((3, 40, 4), np.float32))
    bad = runner.invoke(app, ["embed", "--run-id", run, "--input", str(tmp_path / "four.npz"), "--out",
                              str(tmp_path / "x.npz"), "--tracking-uri", store])
    assert bad.exit_code == 2
    line = one_error_line(bad.output)
    assert "4 columns per particle, the model takes 15" in line and "charge" in line
    # JetNet-layout files hold no charge: one line naming the file
    jetnet = write_fake_folder(tmp_path / "jetnet", 60)
    bad = runner.invoke(app, ["probe", "--run-id", run, "--data", str(jetnet), "--tracking-uri", store,
                              *set_args(["data.n_train=100", "data.n_val=20", "data.n_test=40"])])
    assert bad.exit_code == 2
    assert "q.hdf5: feature 'charge' is not in a JetNet-layout file" in one_error_line(bad.output)
    # a feature name that does not exist: one config error naming the field and the choices
    bad = runner.invoke(app, ["pretrain", "--data", str(root), "--set", "model.features=[eta_rel,phi_rel,pt_rel,pid]"])
    assert bad.exit_code == 2 and "model.features: unknown particle feature 'pid'; choose from" in bad.output


def test_streamed_pretraining_on_declared_features(folders: tuple[Path, Path], tmp_path: Path,
                                                   new_store: NewStore) -> None:
    root, parquet = folders
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["pretrain", "--data", str(parquet), "--out", str(tmp_path / "pt"),
                                 "--tracking-uri", store,
                                 *set_args(TINY + SMALL + SCHEMA + ["data.stream=true", "data.window=200",
                                                                    f"data.val_dir={root}"])])
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert pre.data.params["data.stream"] == "True" and "val/knn_acc" in pre.data.metrics
    assert get_model_info(pre.data.tags["jbot.model_uri"]).metadata["jbot.input"].startswith("float jets (N, 40, 15): ")


def test_a_user_preset_through_pretrain_probe_anomaly(folders: tuple[Path, Path], tmp_path: Path,
                                                      new_store: NewStore) -> None:
    root, _ = folders
    store = new_store(tmp_path / "store")
    preset = tmp_path / "resonances.yaml"
    preset.write_text("dataset: jetclass\nclasses: {ZJetsToNuNu: QCD, HToBB: resonance, TTBar: resonance}\n"
                      "background: [ZJetsToNuNu]\n")
    ok = cli_ok(store)

    sizes = ["data.n_train=160", "data.n_val=30", "data.n_test=60"]  # QCD: half of every set
    ok("pretrain", "--data", str(root), "--preset", str(preset), "--out", str(tmp_path / "pt"),
       *set_args(TINY + sizes + SMALL))
    client = MlflowClient(store)
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    run = pre.info.run_id
    out = ok("probe", "--run-id", run, "--data", str(root), "--preset", str(preset), *set_args(sizes + SMALL))
    assert "resonance" in out
    out = ok("anomaly", "--run-id", run, "--data", str(root), "--preset", str(preset), "--out", str(tmp_path / "an"),
             *set_args(["data.n_train=100", "data.n_val=20", "data.n_test=30"] + SMALL))
    assert "AUC resonance" in out
    # the encoder saw the resonances in pre-training (a balanced preset): the report says so
    assert "saw signal jets" in out
    bad = runner.invoke(app, ["probe", "--run-id", run, "--data", str(root), "--preset", "nope.yaml",
                              "--tracking-uri", store])
    assert bad.exit_code == 2 and "nope.yaml: preset file not found" in one_error_line(bad.output)
