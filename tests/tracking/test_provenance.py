"""What a run says it used is what it used: a registry alias is resolved once, into the version downloaded and
named in the run's tags, and each checkpoint is uploaded once."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import load_config
from jbot.tracking.mlflow import connect, tracked_run
from jbot.tracking.models import log_jbot_model
from jbot.tracking.registry import register_model
from tests.conftest import TINY, NewStore, fake_jets, set_args, tiny_checkpoint

runner = CliRunner()


def test_an_alias_moved_while_the_model_downloads_names_the_version_scored(
        fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_store: NewStore) -> None:
    """``register best`` may move ``@champion`` (a sweep finishing with --register) between the download and the
    run's tags: the tags still name the version that was downloaded and scored."""
    import numpy as np

    store = new_store(tmp_path / "store")
    connect(store)
    cfg = load_config(None, [*TINY, f"tracking.uri={store}"])
    runs = []
    for i in range(2):
        with tracked_run(cfg, "pretrain", experiment="alias-test") as run:
            uri = log_jbot_model(tiny_checkpoint(tmp_path / f"c{i}.pt", i),
                                 fake_jets(4, 0, np.random.default_rng(0))[0], 16, classifier=False)
            runs.append(run.run_id)
        register_model(uri, "jbot-encoder")
    client = MlflowClient(store)
    client.set_registered_model_alias("jbot-encoder", "champion", "1")

    download = mlflow.artifacts.download_artifacts
    asked: list[str] = []

    def download_then_move(*args: object, **kwargs: object) -> str:
        asked.append(str(kwargs.get("artifact_uri")))
        local = download(*args, **kwargs)  # type: ignore[arg-type]
        client.set_registered_model_alias("jbot-encoder", "champion", "2")  # meanwhile, elsewhere
        return local

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_then_move)
    result = runner.invoke(app, ["anomaly", "--model", "models:/jbot-encoder@champion", "--data", str(fake_data),
                                 "--out", str(tmp_path / "anomaly"), "--tracking-uri", store,
                                 *set_args(["data.n_train=300", "data.n_val=100", "data.n_test=200",
                                            "anomaly.reference_size=200", "evaluate.n_folds=2"])])
    assert result.exit_code == 0, result.output
    assert asked == ["models:/jbot-encoder/1"], "the alias is pinned to its version before the download"
    (scored,) = client.search_runs([client.get_experiment_by_name("jbot-anomaly").experiment_id])
    assert scored.data.tags["jbot.upstream_model"] == "jbot-encoder/1"
    assert scored.data.tags["jbot.upstream_run"] == runs[0]
    assert scored.data.tags["jbot.source"] == "models:/jbot-encoder@champion"
    report = (tmp_path / "anomaly" / "anomaly_report.html").read_text()
    assert "jbot-encoder/1" in report and "jbot-encoder/2" not in report


def test_a_missing_alias_is_one_line(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["anomaly", "--model", "models:/nothing@champion", "--data", str(fake_data),
                                 "--tracking-uri", store])
    assert result.exit_code == 2, result.output
    assert "models:/nothing@champion" in result.output and "Traceback" not in result.output


def test_pretraining_uploads_its_checkpoint_once(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    """The final checkpoint is in the logged model, not a second time as a run artifact; the model loads."""
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path / "pt"),
                                 "--tracking-uri", store, *set_args([*TINY, "pretrain.epochs=1", "data.n_train=300",
                                                                     "data.n_val=100", "data.n_test=100"])])
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert "checkpoints" not in {a.path for a in client.list_artifacts(pre.info.run_id)}
    model_uri = pre.data.tags["jbot.model_uri"]
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "dl"), tracking_uri=store))
    assert len(sorted(local.rglob("*.pt"))) == 1
