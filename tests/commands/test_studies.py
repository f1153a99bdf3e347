"""`jbot reproduce --study ablation` end to end on a tiny configuration (each variant's pre-training, probe,
q+g pre-training and anomaly run a child of one parent; resumed after a failure), and the studies' registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.commands import studies
from jbot.commands.reproduce import ReproduceError, _trained_on, check_tables, plan_for
from jbot.config import ABLATION_VARIANTS, flatten, load_config
from jbot.errors import JbotError
from tests.commands.test_reproduce import QUICK
from tests.conftest import NewStore, write_fake_folder

runner = CliRunner()


def study_args(tmp_path: Path, study: str, store: str, sets: list[str]) -> list[str]:
    """``jbot reproduce --study`` on 400 fake jets per class, into ``tmp_path / study``."""
    data = write_fake_folder(tmp_path / "jets", 400)
    return ["reproduce", "--study", study, "--scale", "demo", "--data", str(data), "--out", str(tmp_path / study),
            "--tracking-uri", store, *[a for item in sets for a in ("--set", item)]]


def fails_once_then_resumes(monkeypatch: pytest.MonkeyPatch, module: Any, command: str, step: str,
                            args: list[str]) -> str:
    """Run ``args`` with ``module.command`` failing on the step whose out_dir is ``step`` (exit 2, its message),
    then again as it is; returns the second run's output."""
    real = getattr(module, command)

    def broken(cfg: object, source: object, **kwargs: object) -> object:
        if Path(str(kwargs["out_dir"])).name == step:
            raise JbotError(f"step {step} broke")
        return real(cfg, source, **kwargs)

    monkeypatch.setattr(module, command, broken)
    first = runner.invoke(app, args)
    assert first.exit_code == 2 and f"step {step} broke" in first.output, first.output
    monkeypatch.setattr(module, command, real)
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    return second.output


def test_every_study_is_consistent_and_the_option_names_the_registry() -> None:
    for name in studies.STUDIES:
        check_tables(studies.study(name))
    with pytest.raises(ReproduceError, match="--study is one of paper, ablation, label-fraction, not 'abalation'"):
        studies.study("abalation")
    ablation = studies.study("ablation")
    assert [v.name for v in studies.VARIANTS] == ["full", "part-only", "cls-only", "no-koleo", "no-mask"]
    assert len(ablation.steps) == 4 * len(studies.VARIANTS)
    assert [c.name for c in ablation.claims] == [f"without_{v.name}" for v in studies.VARIANTS[1:]]
    assert ABLATION_VARIANTS == tuple(v.name for v in studies.VARIANTS)  # the config's names are the registry's
    some = studies.study("ablation", load_config("jbot-s-cpu", [
        "evaluate.ablation_variants=[cls-only,full,part-only]", "evaluate.ablation_anomaly=false"]))
    assert [s.name for s in some.steps] == [f"{kind}-{v}" for v in ("full", "part-only", "cls-only")
                                            for kind in ("pretrain-5class", "probe")]
    assert [c.name for c in some.claims] == ["without_part-only", "without_cls-only"]
    for bad_variants, message in (("[part-only,cls-only]", "keep 'full' in the list"), ("[full]", "at least one"),
                                  ("[full,no-kolo]", "Input should be")):
        with pytest.raises(ValueError, match=message):
            load_config("jbot-s-cpu", [f"evaluate.ablation_variants={bad_variants}"])
    fractions = studies.study("label-fraction", load_config("jbot-s-cpu", ["evaluate.label_fractions=[1.0,0.05]"]))
    assert [s.name for s in fractions.steps] == ["pretrain-5class", *(
        f"finetune-{task}-{p}-{side}" for task in ("5class", "tqg") for p in ("5%", "100%")
        for side in ("pretrained", "scratch"))]
    assert [c.name for c in fractions.claims] == ["5class_5pct", "5class_100pct", "tqg_5pct", "tqg_100pct"]
    with pytest.raises(ValueError, match=r"each fraction must lie in \(0, 1\]: 1.5 does not"):
        load_config("jbot-s-cpu", ["evaluate.label_fractions=[0.5,1.5]"])
    bad = runner.invoke(app, ["reproduce", "--study", "abalation"])
    assert bad.exit_code == 2 and "--study is one of paper, ablation, label-fraction" in bad.output, bad.output


def test_naming_more_variants_or_fractions_later_resumes_the_same_parent(tmp_path: Path) -> None:
    def key(study: str, sets: list[str]) -> str:
        return plan_for("demo", "S", tmp_path / "jets", tmp_path / study, sets, f"sqlite:///{tmp_path / 'm.db'}",
                        study).key

    three = key("ablation", ["evaluate.ablation_variants=[full,part-only,cls-only]", "evaluate.ablation_anomaly=false"])
    assert three == key("ablation", []) != key("ablation", ["pretrain.epochs=3"])
    assert key("label-fraction", ["evaluate.label_fractions=[0.5]"]) == key("label-fraction", [])


def test_each_variant_pretrains_with_its_own_switch_on_the_same_jets(tmp_path: Path) -> None:
    plan = plan_for("demo", "S", tmp_path / "jets", tmp_path / "out", [], f"sqlite:///{tmp_path / 'm.db'}",
                    "ablation")
    full = _trained_on(plan, "5class", studies.FULL)
    switched = {"part-only": ("pretrain.use_cls_loss", False), "cls-only": ("pretrain.use_part_loss", False),
                "no-koleo": ("pretrain.koleo_weight", 0.0), "no-mask": ("mask.enabled", False)}
    for v in studies.VARIANTS:
        for preset in ("5class", "qg"):
            cfg = _trained_on(plan, preset, v)
            assert cfg.pretrain.out_dir == str(tmp_path / "out" / f"pretrain-{preset}-{v.name}")
            changed = {k: b for k, b in flatten(cfg).items() if flatten(full)[k] != b and k not in (
                "pretrain.out_dir", "data.preset")}
            assert changed == (dict([switched[v.name]]) if v.name in switched else {}), (v.name, changed)


@pytest.mark.integration
def test_ablation_runs_each_variant_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      new_store: NewStore) -> None:
    """Three of the variants (the two single-loss ones the paper's claim is about, chosen by
    evaluate.ablation_variants), to keep the test short; the switches of all are checked above."""
    store, out = new_store(tmp_path / "mlruns"), tmp_path / "ablation"
    args = study_args(tmp_path, "ablation", store, [*QUICK, "pretrain.epochs=1",
                                                    "evaluate.ablation_variants=[full,part-only,cls-only]"])

    import jbot.commands.anomaly

    output = fails_once_then_resumes(monkeypatch, jbot.commands.anomaly, "tracked_anomaly", "anomaly-cls-only", args)
    assert output.count("done earlier") == 11 and "12/12 anomaly-cls-only" in output, output

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-reproduce")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`jbot.study` = 'ablation'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "ablation-demo-S"
    assert parent.data.params["reproduce.study"] == "ablation"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 12 and all(c.info.status == "FINISHED" for c in children)
    runs = {c.info.run_name: c for c in children}
    # each variant pre-trained with its own switch, on the same jets and seed
    assert runs["pretrain-D16L1-5class-e1-part-only"].data.params["pretrain.use_cls_loss"] == "False"
    assert runs["pretrain-D16L1-qg-e1-cls-only"].data.params["pretrain.use_part_loss"] == "False"
    fingerprints = {c.data.tags["jbot.data_fingerprint"] for name, c in runs.items() if "-5class-" in name}
    assert len(fingerprints) == 1

    summary = json.loads((out / "reproduce.json").read_text())
    assert summary["study"] == "ablation" and "_maps" not in summary
    assert {c["name"] for c in summary["claims"]} == {"without_part-only", "without_cls-only", "combination"}
    rows = {row["variant"]: row for row in summary["ablation"]}
    assert list(rows) == ["full", "part-only", "cls-only"]
    probe = client.get_run(runs["probe-cls-only"].info.run_id).data.metrics
    assert rows["cls-only"]["knn_acc"] == [pytest.approx(probe["test/knn_acc"]), pytest.approx(probe["test/knn_acc_std"])]
    assert rows["cls-only"]["cost"] == pytest.approx(rows["full"]["knn_acc"][0] - probe["test/knn_acc"])
    assert 0.0 <= rows["part-only"]["nmi"][0] <= 1.0 and 0.0 <= rows["part-only"]["anomaly_auc"][0] <= 1.0
    assert all(row["cls_rank"] >= 1.0 for row in rows.values())
    paired = {c["name"]: c for c in summary["claims"]}["without_cls-only"]
    assert "paired bootstrap" in paired["text"]
    report = (out / "reproduce.html").read_text()
    assert "The ablation study at the demo scale" in report and "<h2>Ablation</h2>" in report
    assert report.count("t-SNE") >= 1 and all(f"<td>{v}</td>" in report for v in rows)


def test_the_ablation_table_has_an_anomaly_column_only_where_the_anomaly_steps_ran() -> None:
    nan = float("nan")
    row = {"variant": "full", "removes": "nothing", "knn_acc": [0.6, 0.02], "linear_acc": [0.59, 0.02],
           "purity": [0.38, nan], "ari": [0.09, nan], "nmi": [0.13, nan], "cls_rank": 24.9, "teacher_occupancy": 0.88}
    without = studies.ablation_html({"ablation": [{**row, "anomaly_auc": [nan, nan]}]})
    assert "anomaly AUC" not in without and "<td>0.130</td><td>24.90</td>" in without
    with_auc = studies.ablation_html({"ablation": [{**row, "anomaly_auc": [0.61, 0.04]}]})
    assert "q+g anomaly AUC" in with_auc and "<td>0.610 ± 0.040</td>" in with_auc


def test_crossover_names_where_pretraining_stops_helping() -> None:
    assert studies.crossover([(0.01, True), (0.1, True), (1.0, False)]) == (
        "pre-training helps clearly up to 10% of the labels; from 100% on it does not (the crossover)")
    assert studies.crossover([(0.01, True), (1.0, True)]) == "pre-training helps clearly at every fraction, up to 100%"
    assert studies.crossover([(0.01, False), (1.0, False)]) == "pre-training helps clearly at no fraction"
    assert studies.crossover([(0.01, False), (0.1, True), (1.0, False)]) == (
        "pre-training helps clearly up to 10% of the labels (not at 1%); from 100% on it does not (the crossover)")
    assert studies.crossover([(0.01, False), (1.0, True)]) == "pre-training helps clearly up to 100% of the labels " \
        "(not at 1%)"


@pytest.mark.integration
def test_label_fraction_runs_each_fraction_once_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            new_store: NewStore) -> None:
    store, out = new_store(tmp_path / "mlruns"), tmp_path / "label-fraction"
    args = study_args(tmp_path, "label-fraction", store, [*QUICK, "evaluate.label_fractions=[0.25,1.0]"])

    import jbot.commands.finetune

    output = fails_once_then_resumes(monkeypatch, jbot.commands.finetune, "tracked_finetune",
                                     "finetune-tqg-25%-scratch", args)
    assert output.count("done earlier") == 6 and "7/9 finetune-tqg-25%-scratch" in output, output

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-reproduce")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`jbot.study` = 'label-fraction'")
    assert parent.info.status == "FINISHED"
    children = {c.info.run_name: c for c in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert len(children) == 9
    quarter = children["pretrained-25%-tqg"]
    assert quarter.data.params["finetune.fraction"] == "0.25" and quarter.data.params["finetune.task"] == "tqg"
    # the init and the encoder's run as params, a colour per init; only the sections fine-tuning reads
    pre = children["pretrain-D16L1-5class-e2"].info.run_id
    assert (quarter.data.params["finetune.init"], quarter.data.params["finetune.source"]) == ("pretrained", pre)
    scratch = children["scratch-25%-tqg"]
    assert (scratch.data.params["finetune.init"], scratch.data.params["finetune.source"]) == ("scratch", "")
    assert (quarter.data.tags["mlflow.runColor"], scratch.data.tags["mlflow.runColor"]) == ("#1F77B4", "#D62728")
    assert not any(k.startswith(("pretrain.", "anomaly.", "sweep.", "mask.")) for k in quarter.data.params)
    assert {"test/rejection_at_0.3", "test/rejection_at_0.5"} <= set(quarter.data.metrics)

    summary = json.loads((out / "reproduce.json").read_text())
    curves = summary["label_fraction"]
    assert [row["fraction"] for row in curves["5class"]["rows"]] == [0.25, 1.0]
    top = curves["tqg"]["rows"][0]
    assert top["pretrained/auc"][0] == pytest.approx(quarter.data.metrics["test/auc"])
    assert top["pretrained/rejection_at_0.5"][0] == pytest.approx(quarter.data.metrics["test/rejection_at_0.5"])
    if quarter.data.metrics.get("test/rejection_at_0.5_unresolved"):  # on fewer than 10 background jets: said so
        n_bkg = int(quarter.data.metrics["test/rejection_at_0.5_n_bkg"])
        assert top["pretrained/rejection_at_0.5_n_bkg"] == n_bkg < 10
    assert curves["tqg"]["crossover"].startswith("pre-training helps clearly")
    assert {c["name"] for c in summary["claims"]} == {"5class_25pct", "5class_100pct", "tqg_25pct", "tqg_100pct"}
    report = (out / "reproduce.html").read_text()
    assert "<h2>Label fraction</h2>" in report and "labelled fraction" in report and "helps clearly" in report
