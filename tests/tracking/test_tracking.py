"""MLflow tracking and the Model Registry against real stores: SQLite in a temp folder and a real
`mlflow server` subprocess. No mocks of MLflow."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import load_config
from jbot.evaluate.embed import embed
from jbot.tracking.mlflow import TrackingError, connect, tracked_run
from jbot.tracking.models import load_from_uri, log_jbot_model
from jbot.tracking.registry import register_best
from jbot.train.checkpoint import load_model
from tests.conftest import TINY, NewStore, running_mlflow_server, tiny_checkpoint
from tests.conftest import set_args as _sets

runner = CliRunner()
SIZES = ["data.n_train=400", "data.n_val=100", "data.n_test=200"]



@pytest.fixture
def store(tmp_path: Path, new_store: NewStore) -> str:
    return new_store(tmp_path / "store")


@pytest.mark.integration
def test_pretrain_and_finetune_are_readable_back(fake_data: Path, tmp_path: Path, store: str) -> None:
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path / "pt"),
                                 "--tracking-uri", store, *_sets(TINY + SIZES)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(store)
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert pre.info.status == "FINISHED"
    assert pre.data.params["model.d_model"] == "16" and pre.data.params["pretrain.epochs"] == "3"
    assert [m.step for m in client.get_metric_history(pre.info.run_id, "train/loss")] == [1, 2, 3]
    assert {"val/knn_acc", "train/loss", "system/jets_per_s"} <= set(pre.data.metrics)
    assert not any(k.startswith("final/") for k in pre.data.metrics), "no single-point copies of the last epoch"
    assert len(client.get_metric_history(pre.info.run_id, "val/knn_acc")) == 2  # epochs 2 and 3, logged once each
    for tag in ("jbot.version", "jbot.git_commit", "jbot.data_fingerprint", "jbot.device", "jbot.model_uri"):
        assert tag in pre.data.tags
    artifacts = {a.path for a in client.list_artifacts(pre.info.run_id)}
    assert {"config.yaml", "metrics", "plots"} <= artifacts and "checkpoints" not in artifacts  # in the model
    html = Path(client.download_artifacts(pre.info.run_id, "plots/learning_curves.html", str(tmp_path)))
    assert "plotly" in html.read_text()[:5_000_000].lower()

    ft = runner.invoke(app, ["finetune", "--run-id", pre.info.run_id, "--data", str(fake_data), "--out",
                             str(tmp_path / "ft"), "--tracking-uri", store, "--fraction", "0.5",
                             *_sets(SIZES + ["finetune.epochs=2", "finetune.batch_size=64"])])
    assert ft.exit_code == 0, ft.output
    (fine,) = client.search_runs([client.get_experiment_by_name("jbot-finetune").experiment_id])
    assert fine.data.tags["jbot.upstream_run"] == pre.info.run_id
    assert fine.data.params["model.d_model"] == "16"  # the encoder's architecture, same param names
    assert {"test/acc", "test/auc_t", "test/acc_std", "val/acc", "val/best_acc"} <= set(fine.data.metrics)
    assert [m.step for m in client.get_metric_history(fine.info.run_id, "val/acc")] == [1, 2]


def _jets(n: int = 16) -> np.ndarray:
    from tests.conftest import fake_jets

    return fake_jets(n, 2, np.random.default_rng(0))[0]


def test_register_best_mode_idempotent_and_alias(tmp_path: Path, store: str) -> None:
    client = connect(store)
    cfg = load_config(None, [*TINY, f"tracking.uri={store}"])
    run_ids = []
    for i, acc in enumerate([0.61, 0.74, 0.52]):
        with tracked_run(cfg, "finetune", experiment="reg-test") as run:
            run.log_metrics({"test/acc": acc})
            log_jbot_model(tiny_checkpoint(tmp_path / f"c{i}.pt", i), _jets(4), 16, classifier=False)
            run_ids.append(run.run_id)
    best = register_best(client, "reg-test", "test/acc", "jbot-encoder", "max", "champion")
    assert best.run_id == run_ids[1] and best.version == "1" and best.created
    again = register_best(client, "reg-test", "test/acc", "jbot-encoder", "max", "champion")
    assert again.version == "1" and not again.created
    assert len(client.search_model_versions("name = 'jbot-encoder'")) == 1
    worst = register_best(client, "reg-test", "test/acc", "jbot-encoder", "min", "worst")
    assert worst.run_id == run_ids[2] and worst.version == "2"
    mv = client.get_model_version_by_alias("jbot-encoder", "champion")
    assert str(mv.version) == "1" and mv.tags["jbot.metric"] == "test/acc" and mv.tags["jbot.run_id"] == run_ids[1]
    with pytest.raises(TrackingError, match=r"no run matches: experiment 'reg-test'.*'test/auc'"):
        register_best(client, "reg-test", "test/auc", "jbot-encoder")
    filtered = register_best(client, "reg-test", "test/acc", "jbot-encoder", "max", None,
                             f"attributes.run_id != '{run_ids[1]}'")
    assert filtered.run_id == run_ids[0]
    # each version's description is its model card, and its tags carry the same facts
    card = client.get_model_version("jbot-encoder", filtered.version)
    text = card.description
    assert "**Input**: float jets (N, 30, 4): eta_rel, phi_rel, pt_rel, valid" in text
    assert "**Output**: float32 (N, 16): the [CLS] embedding" in text
    assert f"the highest test/acc (0.61) of experiment reg-test, runs matching `` attributes.run_id != '{run_ids[1]}' ``" in text
    assert f"[{run_ids[0]}](http://127.0.0.1:5000/#/experiments/" in text and "models:/jbot-encoder/" in text
    assert card.tags["jbot.selected_by"].startswith("the highest test/acc (0.61)") and "jbot.verdicts" not in card.tags
    assert card.tags["jbot.input"].startswith("float jets (N, 30, 4)")

    # the registered model by alias gives embeddings identical to the run's checkpoint
    x = _jets(32)
    via_alias = load_from_uri("models:/jbot-encoder@champion", store)
    local = load_model(tmp_path / "c1.pt")
    assert np.array_equal(embed(via_alias.encoder, x)[0], embed(local.encoder, x)[0])
    # and MLflow's own pyfunc loader predicts a batch of [CLS] embeddings
    pyfunc = mlflow.pyfunc.load_model("models:/jbot-encoder@champion")
    np.testing.assert_allclose(pyfunc.predict(x), embed(local.encoder, x)[0], rtol=1e-5, atol=1e-6)

    listed = runner.invoke(app, ["register", "list", "--tracking-uri", store])
    assert listed.exit_code == 0 and "champion" in listed.output and "worst" in listed.output
    none = runner.invoke(app, ["register", "best", "--experiment", "nope", "--tracking-uri", store])
    assert none.exit_code == 2 and "no experiment named 'nope'" in none.output


def test_run_that_raises_ends_failed(store: str) -> None:
    cfg = load_config(None, [*TINY, f"tracking.uri={store}"])
    with pytest.raises(RuntimeError, match="boom"), tracked_run(cfg, "pretrain", experiment="fail-test") as run:
        run.log_metrics({"train/loss": 1.0}, step=1)
        raise RuntimeError("boom")
    client = MlflowClient(store)
    (failed,) = client.search_runs([client.get_experiment_by_name("fail-test").experiment_id])
    assert failed.info.status == "FAILED" and "boom" in failed.data.tags["jbot.error"]
    text = Path(client.download_artifacts(failed.info.run_id, "error/traceback.txt")).read_text()
    assert "RuntimeError: boom" in text


def test_unreachable_server_fails_fast(fake_data: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path),
                                 "--tracking-uri", "http://127.0.0.1:9", *_sets(TINY + SIZES)])
    assert time.monotonic() - start < 15
    assert result.exit_code == 2 and "cannot reach the MLflow tracking server" in result.output
    assert not (tmp_path / "checkpoint.pt").exists(), "no training started"


@pytest.fixture
def mlflow_server(tmp_path: Path, new_store: NewStore) -> Iterator[str]:
    with running_mlflow_server(new_store(tmp_path / "srv"), tmp_path / "artifacts") as url:
        yield url


@pytest.mark.integration
def test_rest_api_of_a_real_server_lists_runs_with_documented_metrics(fake_data: Path, tmp_path: Path,
                                                                      mlflow_server: str) -> None:
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path / "pt"),
                                 "--tracking-uri", mlflow_server, *_sets(TINY + SIZES)])
    assert result.exit_code == 0, result.output
    exps = json.load(urllib.request.urlopen(urllib.request.Request(
        f"{mlflow_server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=jbot-pretrain")))
    body = json.dumps({"experiment_ids": [exps["experiment"]["experiment_id"]]}).encode()
    req = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    runs = json.load(urllib.request.urlopen(req))["runs"]
    assert len(runs) == 1
    metric_names = {m["key"] for m in runs[0]["data"]["metrics"]}
    assert {"train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "val/knn_acc",
            "system/wall_seconds"} <= metric_names
    assert runs[0]["info"]["status"] == "FINISHED"


def test_saved_runs_view_shows_headline_metrics_and_searched_params(store: str) -> None:
    """The view `jbot ui` links to: headline metrics as columns (a combined AUC, not every signal's), a sweep's
    searched parameters, the Dataset column only where runs have datasets; saved as MLflow's shared-view tag."""
    from jbot.tracking.mlflow import save_runs_view

    client = connect(store)
    exp = client.create_experiment("jbot-view")
    run = client.create_run(exp)
    for key in ("test/acc", "val/knn_acc", "test/knn/combined/auc", "test/knn/W/auc", "test/acc_std",
                "system/cpu_utilization_percentage", "diag/lr"):
        client.log_metric(run.info.run_id, key, 0.5)
    client.log_param(run.info.run_id, "space.anomaly.score", "{}")
    client.log_param(run.info.run_id, "sweep.objective", "val/knn_acc")
    client.set_tag(run.info.run_id, "jbot.role", "sweep-parent")
    client.set_terminated(run.info.run_id)
    for init in ("pretrained", "scratch"):  # children: told apart by a param, which becomes a column
        child = client.create_run(exp, tags={"mlflow.parentRunId": run.info.run_id})
        client.log_param(child.info.run_id, "finetune.init", init)
        client.log_metric(child.info.run_id, "train/loss", 1.0, step=1)
        client.set_terminated(child.info.run_id)
    key = save_runs_view(client, exp)
    state = json.loads(client.get_experiment(exp).tags[f"mlflow.sharedViewState.{key}"])
    assert state["selectedColumns"] == ["params.`finetune.init`", "metrics.`test/acc`", "metrics.`test/acc_std`",
                                        "metrics.`test/knn/combined/auc`", "metrics.`val/knn_acc`",
                                        "metrics.`train/loss`", "params.`anomaly.score`"]
    assert state["runsExpanded"] == {run.info.run_id: True} and state["runsHiddenMode"] == "SHOW_ALL"
    assert state["columnWidths"]["attributes.`Run Name`"] >= 300
    charts = {c["type"]: c for c in state["compareRunCharts"]}
    assert charts["PARALLEL"]["selectedParams"] == ["anomaly.score"]
    assert charts["PARALLEL"]["selectedMetrics"] == ["val/knn_acc"]
    bars = [c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "BAR"]
    assert bars == ["test/acc", "test/knn/combined/auc"]
    assert [c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "LINE"] == ["train/loss", "val/knn_acc"]
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {state["compareRunSections"][0]["uuid"]}
    # `jbot ui` also links MLflow's comparison of a sweep's (or reproduction's) children, shown side by side
    from jbot.tracking.ui import comparison_links

    ((label, link),) = comparison_links(client, exp, "http://127.0.0.1:5000")
    assert "(2 runs)" in label and link.startswith("http://127.0.0.1:5000/#/compare-runs?runs=%5B%22")
    assert all(c.info.run_id in link for c in client.search_runs([exp], f"tags.mlflow.parentRunId = '{run.info.run_id}'"))
    # saved again unchanged: the store is not written (opening the UI twice writes nothing)
    writes = []
    real = client.set_experiment_tag
    client.set_experiment_tag = lambda *a: writes.append(a) or real(*a)  # type: ignore[method-assign]
    assert save_runs_view(client, exp) == key and writes == []
