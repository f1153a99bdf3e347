"""A run's params are the settings it used: the split's preset and the encoder's model, whatever config the command
started from (a probe on tqg of a D=16 encoder says data.preset = tqg and model.d_model = 16)."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from tests.conftest import NewStore, tiny_checkpoint

runner = CliRunner()
SETS = ["data.n_train=200", "data.n_val=50", "data.n_test=100", "tracking.log_system_metrics=false",
        "evaluate.n_folds=2", "finetune.epochs=1", "finetune.batch_size=64", "probe.silhouette_samples=100",
        "anomaly.reference_size=100", "anomaly.knn_k=5", "anomaly.cosine_k=5", "anomaly.gmm_components=2"]


def test_logged_params_are_the_settings_each_command_used(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)  # D = 16; the default config says 32
    store = new_store(tmp_path / "store")
    common = ["--data", str(fake_data), "--tracking-uri", store, *[a for s in SETS for a in ("--set", s)]]
    for args in (["probe", "--model", str(encoder), "--preset", "tqg"],
                 ["finetune", "--model", str(encoder), "--task", "tqg", "--out", str(tmp_path / "ft")],
                 ["anomaly", "--model", str(encoder), "--out", str(tmp_path / "an")],
                 ["sweep", "anomaly", "--model", str(encoder), "--trials", "1", "--storage",
                  f"sqlite:///{tmp_path / 'optuna.db'}"]):
        result = runner.invoke(app, [*args, *common])
        assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("jbot.role") != "sweep-parent"]
    assert {r.data.tags["jbot.command"] for r in runs} == {"probe", "finetune", "anomaly"} and len(runs) == 4
    for run in runs:
        p, tags = run.data.params, run.data.tags
        assert p["data.preset"] == tags["jbot.preset"], (tags["jbot.command"], p["data.preset"], tags["jbot.preset"])
        assert p["model.d_model"] == "16" and p["model.n_layers"] == "1", tags["jbot.command"]
