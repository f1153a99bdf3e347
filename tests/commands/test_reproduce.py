"""`jbot reproduce` end to end on a tiny configuration: every step a child run of one parent, the report beside
the paper's numbers, and a re-run after a failure that skips the finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.errors import JbotError
from tests.conftest import TINY, NewStore, write_fake_folder

pytestmark = pytest.mark.integration
runner = CliRunner()
QUICK = TINY + ["pretrain.epochs=2", "pretrain.batch_size=64", "pretrain.knn_every=1", "finetune.epochs=1",
                "finetune.batch_size=64", "data.n_train=400", "data.n_val=100", "data.n_test=200",
                "evaluate.n_folds=2", "probe.silhouette_samples=100", "anomaly.reference_size=150",
                "anomaly.knn_k=5", "anomaly.cosine_k=5", "anomaly.gmm_components=2"]


def test_reproduce_runs_every_step_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 400)
    store = new_store(tmp_path / "mlruns")
    args = ["reproduce", "--scale", "demo", "--data", str(data), "--out", str(tmp_path / "out"),
            "--tracking-uri", store, *[a for item in QUICK for a in ("--set", item)]]

    import jbot.commands.anomaly

    def broken(*args: object, **kwargs: object) -> None:
        raise JbotError("the anomaly step broke")

    monkeypatch.setattr(jbot.commands.anomaly, "tracked_anomaly", broken)
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and "the anomaly step broke" in first.output, first.output
    monkeypatch.undo()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "pretrain-5class: done earlier" in second.output and "anomaly: done earlier" not in second.output

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-reproduce")
    parents = client.search_runs([exp.experiment_id], "tags.`jbot.role` = 'reproduce-parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(c.info.run_name for c in children)
    steps = {k.removeprefix("jbot.step."): v for k, v in parent.data.tags.items() if k.startswith("jbot.step.")}
    assert len(steps) == 12 and len(names) == len(set(names)) == 12, names  # each step ran once
    assert {c.info.run_id for c in children} == set(steps.values())
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:  # every step's params say the split it ran on
        assert child.data.params["data.preset"] == child.data.tags["jbot.preset"], child.info.run_name
    assert "data.preset" not in parent.data.params and parent.data.params["reproduce.presets"] == "5class, tqg, qg"
    tqg = client.get_run(steps["finetune-tqg-pretrained"]).data.metrics
    assert {"test/auc", "test/eps_s_at_0.1", "test/eps_s_at_0.001"} <= set(tqg)
    # the verdicts and key numbers as the parent's metrics too (the runs table sorts and charts them)
    verdicts = {k.removeprefix("claim."): v for k, v in parent.data.tags.items() if k.startswith("claim.")}
    for name, verdict in verdicts.items():
        assert parent.data.metrics[f"claim/{name}"] == (0.0 if verdict.startswith("does not") else
                                                       0.5 if "within error" in verdict else 1.0), name
    assert parent.data.metrics["finetune-tqg-pretrained/auc"] == pytest.approx(tqg["test/auc"])
    assert parent.data.metrics["finetune-10pct-pretrained/acc"] > 0

    summary = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert {c["name"] for c in summary["claims"]} == {"pretraining_gain", "finetune_10", "finetune_100",
                                                      "top_tagging", "anomaly"}
    for row in summary["rows"]:  # every number names its run; the paper's, its table
        assert row["run"] in steps.values() and row["paper_source"]
    # the anomaly claim from the anomaly run's per-jet scores: each AUC with its bootstrap interval, and the
    # full-set AUC the run logged
    (anomaly,) = (c for c in summary["claims"] if c["name"] == "anomaly")
    assert "bootstrap SE" in anomaly["text"] and set(anomaly["aucs"]) == {"W", "Z", "t"}
    logged = client.get_run(steps["anomaly"]).data.metrics
    for s, est in anomaly["aucs"].items():
        assert est["value"] == pytest.approx(logged[f"test/knn/{s}/auc"], abs=1e-6) and est["low"] <= est["value"]
    # the anomaly step's sensitivity and sculpting figures: rows of the report, and a link to the step's own report
    sculpted = {r["quantity"].removeprefix("anomaly: "): r["jbot"] for r in summary["rows"]
                if r["quantity"].startswith("anomaly: test/knn/") and r["paper"] is None}
    assert {"test/knn/combined/max_sic", "test/knn/mass_rho/q", "test/knn/mass_rho/g",
            "test/knn/mass_jsd_inv/eps_b_0.1"} <= set(sculpted), sculpted
    for key in ("test/knn/combined/max_sic", "test/knn/mass_rho/q", "test/knn/mass_rho/g"):
        assert sculpted[key] == pytest.approx(logged[key]), key
    report = (tmp_path / "out" / "reproduce.html").read_text()
    assert "href='anomaly/anomaly_report.html'" in report and (tmp_path / "out" / "anomaly" / "anomaly_report.html").exists()
    assert "Table 2, jBOT-S k-NN" in report and "0.710" in report and "demo" in report
    assert "This run took" in report and "#/experiments/" in report and "plotly" in report
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/reproduce.html", "report/reproduce.json"}

    third = runner.invoke(app, args)  # everything finished: nothing runs again, the report is rewritten
    assert third.exit_code == 0 and third.output.count("done earlier") == 12, third.output
