"""`jbot reproduce --study ablation` end to end on a tiny configuration (each variant's pre-training, probe,
q+g pre-training and anomaly run a child of one parent; resumed after a failure), and the studies' registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.commands import studies
from jbot.commands.reproduce import ReproduceError, check_tables
from jbot.config import load_config
from jbot.errors import JbotError
from tests.commands.test_reproduce import QUICK
from tests.conftest import NewStore, write_fake_folder

runner = CliRunner()


def test_every_study_is_consistent_and_the_option_names_the_registry() -> None:
    for name in studies.STUDIES:
        check_tables(studies.study(name))
    with pytest.raises(ReproduceError, match="--study is one of paper, ablation, label-fraction, not 'abalation'"):
        studies.study("abalation")
    ablation = studies.study("ablation")
    assert [v.name for v in studies.VARIANTS] == ["full", "part-only", "cls-only", "no-koleo", "no-mask"]
    assert len(ablation.steps) == 4 * len(studies.VARIANTS)
    assert [c.name for c in ablation.claims] == [f"without_{v.name}" for v in studies.VARIANTS[1:]]
    fractions = studies.study("label-fraction", load_config("jbot-s-cpu", ["evaluate.label_fractions=[1.0,0.05]"]))
    assert [s.name for s in fractions.steps] == ["pretrain-5class", *(
        f"finetune-{task}-{p}-{side}" for task in ("5class", "tqg") for p in ("5%", "100%")
        for side in ("pretrained", "scratch"))]
    assert [c.name for c in fractions.claims] == ["5class_5pct", "5class_100pct", "tqg_5pct", "tqg_100pct"]
    with pytest.raises(ValueError, match=r"each fraction must lie in \(0, 1\]: 1.5 does not"):
        load_config("jbot-s-cpu", ["evaluate.label_fractions=[0.5,1.5]"])
    bad = runner.invoke(app, ["reproduce", "--study", "abalation"])
    assert bad.exit_code == 2 and "--study is one of paper, ablation, label-fraction" in bad.output, bad.output


@pytest.mark.integration
def test_ablation_runs_each_variant_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 400)
    store = new_store(tmp_path / "mlruns")
    out = tmp_path / "ablation"
    args = ["reproduce", "--study", "ablation", "--scale", "demo", "--data", str(data), "--out", str(out),
            "--tracking-uri", store, *[a for item in QUICK for a in ("--set", item)]]

    import jbot.commands.anomaly

    real = jbot.commands.anomaly.tracked_anomaly

    def broken_last(cfg: object, source: str, **kwargs: object) -> object:
        if Path(str(kwargs["out_dir"])).name == "anomaly-no-mask":
            raise JbotError("the last anomaly step broke")
        return real(cfg, source, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jbot.commands.anomaly, "tracked_anomaly", broken_last)
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and "the last anomaly step broke" in first.output, first.output
    monkeypatch.undo()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("done earlier") == 19 and "20/20 anomaly-no-mask" in second.output, second.output

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-reproduce")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`jbot.study` = 'ablation'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "ablation-demo-S"
    assert parent.data.params["reproduce.study"] == "ablation"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 20 and all(c.info.status == "FINISHED" for c in children)
    runs = {c.info.run_name: c for c in children}
    # each variant pre-trained with its own switch, on the same jets and seed
    assert runs["pretrain-D16L1-5class-e2-part-only"].data.params["pretrain.use_cls_loss"] == "False"
    assert runs["pretrain-D16L1-5class-e2-cls-only"].data.params["pretrain.use_part_loss"] == "False"
    assert runs["pretrain-D16L1-qg-e2-no-koleo"].data.params["pretrain.koleo_weight"] == "0.0"
    assert runs["pretrain-D16L1-5class-e2-no-mask"].data.params["mask.enabled"] == "False"
    fingerprints = {c.data.tags["jbot.data_fingerprint"] for name, c in runs.items() if "-5class-" in name}
    assert len(fingerprints) == 1

    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["study"] == "ablation" and "_maps" not in summary
    assert {c["name"] for c in summary["claims"]} == {"without_part-only", "without_cls-only", "without_no-koleo",
                                                      "without_no-mask", "combination"}
    rows = {row["variant"]: row for row in summary["ablation"]}
    assert list(rows) == ["full", "part-only", "cls-only", "no-koleo", "no-mask"]
    probe = client.get_run(runs["probe-cls-only"].info.run_id).data.metrics
    assert rows["cls-only"]["knn_acc"] == [pytest.approx(probe["test/knn_acc"]), pytest.approx(probe["test/knn_acc_std"])]
    assert rows["cls-only"]["cost"] == pytest.approx(rows["full"]["knn_acc"][0] - probe["test/knn_acc"])
    assert 0.0 <= rows["no-mask"]["nmi"][0] <= 1.0 and 0.0 <= rows["no-koleo"]["anomaly_auc"][0] <= 1.0
    assert all(row["cls_rank"] >= 1.0 for row in rows.values())
    paired = {c["name"]: c for c in summary["claims"]}["without_cls-only"]
    assert "paired bootstrap" in paired["text"]
    report = (out / "reproduce.html").read_text()
    assert "The ablation study at the demo scale" in report and "<h2>Ablation</h2>" in report
    assert report.count("t-SNE") >= 1 and all(f"<td>{v}</td>" in report for v in rows)


def test_crossover_names_where_pretraining_stops_helping() -> None:
    assert studies.crossover([(0.01, True), (0.1, True), (1.0, False)]) == (
        "pre-training helps clearly up to 10% of the labels; from 100% on it does not (the crossover)")
    assert studies.crossover([(0.01, True), (1.0, True)]) == "pre-training helps clearly at every fraction, up to 100%"
    assert studies.crossover([(0.01, False), (1.0, False)]) == "pre-training helps clearly at no fraction"


@pytest.mark.integration
def test_label_fraction_runs_each_fraction_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 400)
    store = new_store(tmp_path / "mlruns")
    out = tmp_path / "fractions"
    sets = [*QUICK, "evaluate.label_fractions=[0.25,1.0]"]
    args = ["reproduce", "--study", "label-fraction", "--scale", "demo", "--data", str(data), "--out", str(out),
            "--tracking-uri", store, *[a for item in sets for a in ("--set", item)]]

    import jbot.commands.finetune

    real = jbot.commands.finetune.tracked_finetune

    def broken(cfg: object, source: object, **kwargs: object) -> object:
        if Path(str(kwargs["out_dir"])).name == "finetune-tqg-25%-scratch":
            raise JbotError("a fine-tuning step broke")
        return real(cfg, source, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jbot.commands.finetune, "tracked_finetune", broken)
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and "a fine-tuning step broke" in first.output, first.output
    monkeypatch.undo()
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert second.output.count("done earlier") == 6 and "7/9 finetune-tqg-25%-scratch" in second.output

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-reproduce")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`jbot.study` = 'label-fraction'")
    assert parent.info.status == "FINISHED"
    children = {c.info.run_name: c for c in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert len(children) == 9
    quarter = children["finetune-tqg-25%-pretrained"]
    assert quarter.data.params["finetune.fraction"] == "0.25" and quarter.data.params["finetune.task"] == "tqg"
    assert {"test/rejection_at_0.3", "test/rejection_at_0.5"} <= set(quarter.data.metrics)

    summary = json.loads((out / "reproduce.json").read_text())
    curves = summary["label_fraction"]
    assert [row["fraction"] for row in curves["5class"]["rows"]] == [0.25, 1.0]
    top = curves["tqg"]["rows"][0]
    assert top["pretrained/auc"][0] == pytest.approx(quarter.data.metrics["test/auc"])
    assert top["pretrained/rejection_at_0.5"][0] == pytest.approx(quarter.data.metrics["test/rejection_at_0.5"])
    assert curves["tqg"]["crossover"].startswith("pre-training helps clearly")
    assert {c["name"] for c in summary["claims"]} == {"5class_25pct", "5class_100pct", "tqg_25pct", "tqg_100pct"}
    report = (out / "reproduce.html").read_text()
    assert "<h2>Label fraction</h2>" in report and "labelled fraction" in report and "helps clearly" in report
