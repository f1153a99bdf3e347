"""The tables behind ``jbot reproduce`` and the model sizes: a reproduce step is one ``STEPS`` entry (planned,
collected and printed beside its paper number from that entry alone), a model size one ``SIZES`` entry."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jbot.commands import reproduce
from jbot.commands.reproduce import Claim, Context, ReproduceError, Step, plan_for
from jbot.config import ModelConfig, load_config
from jbot.model import sizes
from jbot.model.sizes import ModelSize, model_label, size_help

ORIGINAL_STEPS = ["pretrain-5class", "probe-random", "probe-5class", "finetune-10%-pretrained",
                  "finetune-10%-scratch", "finetune-100%-pretrained", "finetune-100%-scratch", "probe-tqg",
                  "finetune-tqg-pretrained", "finetune-tqg-scratch", "pretrain-qg", "anomaly"]


class FakeClient:
    """What ``collect`` reads of an MLflow client: each run's metrics."""

    def __init__(self, metrics: dict[str, dict[str, float]]) -> None:
        self.metrics = metrics

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(data=SimpleNamespace(metrics=self.metrics[run_id]))


def plan(tmp_path: Path, size: str = "S", scale: str = "demo") -> reproduce.Plan:
    return plan_for(scale, size, tmp_path / "jets", tmp_path / "out", [],
                    f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")


EXTRA = Step("probe-extra", reproduce._probe("tqg", "pretrain-5class"),
             paper={"test/knn_acc": ("Table 9, an extra probe", 0.5)})


def test_a_step_appended_to_the_table_is_planned_and_collected(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reproduce, "STEPS", (*reproduce.STEPS, EXTRA))
    planned = plan(tmp_path)
    assert [name for name, _ in planned.steps] == [*ORIGINAL_STEPS, "probe-extra"]

    done = {name: f"run-{name}" for name, _ in planned.steps}
    metrics = {run: {} for run in done.values()}
    metrics["run-probe-extra"] = {"test/knn_acc": 0.625, "test/knn_acc_std": 0.125}
    summary = reproduce.collect(FakeClient(metrics), done)
    assert summary["rows"][-7] == {"quantity": "probe-extra: test/knn_acc", "jbot": 0.625, "std": 0.125,
                                   "run": "run-probe-extra", "paper": 0.5, "paper_source": "Table 9, an extra probe"}
    assert [c["name"] for c in summary["claims"]] == ["pretraining_gain", "finetune_10", "finetune_100",
                                                      "top_tagging", "anomaly"]


def test_the_new_steps_runner_is_named_after_it_and_takes_the_encoder_it_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import jbot.commands.probe

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_probe(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return SimpleNamespace(run_id="probe-run")

    monkeypatch.setattr(reproduce, "STEPS", (*reproduce.STEPS, EXTRA))
    monkeypatch.setattr(jbot.commands.probe, "tracked_probe", fake_probe)
    runner = dict(plan(tmp_path).steps)["probe-extra"]
    assert runner(Context("parent-run", {"pretrain-5class": "encoder-run"})) == "probe-run"
    (cfg, source, preset), kwargs = calls[0]
    assert (source, preset, cfg.data.preset) == ("encoder-run", "tqg", "5class")
    assert kwargs["run_name"] == "probe-extra" and kwargs["out_dir"] == tmp_path / "out" / "probe-extra"
    assert kwargs["parent_run_id"] == "parent-run" and kwargs["experiment"] == reproduce.EXPERIMENT


def test_the_reports_rows_keep_their_order_and_paper_numbers(tmp_path: Path) -> None:
    done = {name: f"run-{name}" for name in ORIGINAL_STEPS}
    metrics: dict[str, dict[str, float]] = {run: {} for run in done.values()}
    metrics["run-finetune-tqg-scratch"] = {"test/eps_s_at_0.001": 0.0, "test/eps_s_at_0.001_unresolved": 1.0,
                                           "test/eps_s_at_0.001_n_bkg": 12.0}
    rows = reproduce.collect(FakeClient(metrics), done)["rows"]
    sculpting = ["test/knn/combined/max_sic", "test/knn/mass_rho/q", "test/knn/mass_rho/g",
                 *(f"test/knn/mass_jsd_inv/eps_b_{e}" for e in ("0.5", "0.1", "0.01")),
                 "test/knn/contaminated_0.01/combined/auc", "test/knn/contaminated_0.01/combined/max_sic"]
    assert [r["quantity"] for r in rows] == [
        "probe-random: test/knn_acc", *(f"anomaly: {key}" for key in sculpting), "probe-5class: test/knn_acc", "probe-5class: test/linear_acc",
        "finetune-10%-pretrained: test/acc", "finetune-10%-scratch: test/acc", "finetune-100%-pretrained: test/acc",
        "finetune-100%-scratch: test/acc", "probe-tqg: test/knn_auc", "finetune-tqg-pretrained: test/auc",
        "finetune-tqg-scratch: test/auc", "anomaly: test/knn/W/auc", "anomaly: test/knn/Z/auc",
        "anomaly: test/knn/t/auc", "anomaly: test/knn/combined/auc",
        *(f"{step}: eps_s at eps_b = {eps}" for step in ("finetune-tqg-pretrained", "finetune-tqg-scratch")
          for eps in ("0.1", "0.01", "0.001"))]
    rows = rows[:1] + rows[1 + len(sculpting):]  # the anomaly step's baselines: no paper number
    assert [r["paper"] for r in rows[:14]] == [None, 0.710, 0.674, 0.743, 0.725, 0.764, 0.760, 0.945, 0.958, 0.957,
                                               0.807, 0.836, 0.836, 0.826]
    assert rows[0]["paper_source"] == "(baseline, not in the paper)" and rows[1]["paper_source"] == \
        "Table 2, jBOT-S k-NN"
    assert rows[-1]["unresolved"] == 12 and all("unresolved" not in r for r in rows[:-1])
    assert all(r["run"] == done[r["quantity"].split(":")[0]] for r in rows)
    assert math.isnan(rows[0]["jbot"]) and math.isnan(rows[0]["std"])


def test_the_claims_are_judged_on_the_steps_they_name() -> None:
    done = {name: f"run-{name}" for name in ORIGINAL_STEPS}
    metrics: dict[str, dict[str, float]] = {run: {} for run in done.values()}
    metrics["run-probe-5class"] = {"test/knn_acc": 0.70}
    metrics["run-probe-random"] = {"test/knn_acc": 0.55}
    metrics["run-finetune-10%-pretrained"] = {"test/acc": 0.74, "test/acc_std": 0.005}
    metrics["run-finetune-10%-scratch"] = {"test/acc": 0.72, "test/acc_std": 0.01}
    metrics["run-anomaly"] = {"test/knn/W/auc": 0.8, "test/knn/Z/auc": 0.7, "test/knn/t/auc": 0.5}
    claims = {c["name"]: c for c in reproduce.collect(FakeClient(metrics), done)["claims"]}
    assert claims["pretraining_gain"] == {
        "name": "pretraining_gain", "holds": True,
        "text": "pre-training gain: +0.150 5-class k-NN accuracy over a random encoder (needs >= +0.10)"}
    assert claims["finetune_10"]["holds"] and claims["finetune_10"]["text"] == (
        "fine-tuned above from scratch with 10% of the labels: +0.020 accuracy (fold std 0.010)")
    assert not claims["finetune_100"]["holds"]  # no numbers: NaN never holds
    assert not claims["anomaly"]["holds"] and claims["anomaly"]["text"] == (
        "anomaly (k-NN score, q+g encoder): AUC W 0.800, Z 0.700, t 0.500 (needs > 0.55 each)")


def test_tables_that_name_steps_not_in_the_table_are_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    orphan = Step("probe-orphan", reproduce._probe("5class", "pretrain-nowhere"))
    monkeypatch.setattr(reproduce, "STEPS", (*reproduce.STEPS, orphan))
    with pytest.raises(ReproduceError, match="'pretrain-nowhere', which is not a step listed before it"):
        plan(tmp_path)
    monkeypatch.setattr(reproduce, "STEPS", (reproduce.STEPS[0], *reproduce.STEPS))
    with pytest.raises(ReproduceError, match="step 'pretrain-5class' listed twice"):
        plan(tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(reproduce, "CLAIMS", (*reproduce.CLAIMS, Claim("nothing", ("no-step",), lambda m: (True, ""))))
    with pytest.raises(ReproduceError, match="claim 'nothing: no-step' is not a step"):
        plan(tmp_path)


def test_model_label_names_the_table_sizes_from_their_yaml() -> None:
    assert model_label(load_config("jbot-s").model) == "S"
    assert model_label(load_config("jbot-s-cpu").model) == "S"
    assert model_label(load_config("jbot-b").model) == "B"
    assert model_label(ModelConfig(d_model=48, n_layers=3, n_heads=4)) == "D48L3"
    assert model_label(ModelConfig(d_model=32, n_layers=2, n_heads=2)) == "D32L2"  # S's width, not its heads
    assert size_help() == "S | B (jBOT-S or jBOT-B, Table 1)"


def test_the_size_table_picks_reproduces_configs(tmp_path: Path) -> None:
    assert plan(tmp_path, "S").cfg.pretrain.base_lr == load_config("jbot-s-cpu").pretrain.base_lr
    assert reproduce.scale_config(reproduce.SCALES["paper"], "S") == "jbot-s"
    assert reproduce.scale_config(reproduce.SCALES["demo"], "B") == "jbot-b"
    b = plan(tmp_path, "B")
    assert b.cfg.model.d_model == 64 and b.steps[0][0] == "pretrain-5class"


def test_a_size_added_to_the_table_is_accepted_by_reproduce(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sizes.SIZES, "T", ModelSize("T", config="jbot-b", cpu_config="jbot-s-cpu"))
    demo, paper = plan(tmp_path, "T"), plan(tmp_path, "T", "paper")
    assert demo.size == "T" and demo.cfg.model == load_config("jbot-s-cpu").model
    assert paper.cfg.model == load_config("jbot-b").model
    assert reproduce.scale_config(paper.scale, "T") == "jbot-b"
    assert size_help() == "S | B | T (jBOT-S, jBOT-B or jBOT-T, Table 1)"


def test_an_unknown_size_is_refused_naming_the_tables_sizes(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReproduceError, match=r"--size is one of S, B, not 'XL'"):
        plan(tmp_path, "XL")
    monkeypatch.setitem(sizes.SIZES, "T", ModelSize("T", config="jbot-b"))
    with pytest.raises(ReproduceError, match=r"--size is one of S, B, T, not 'XL'"):
        plan(tmp_path, "XL")


def test_the_size_table_and_the_plan_load_no_torch() -> None:
    code = ("import sys, jbot.model.sizes, jbot.commands.reproduce; "
            "assert not {'torch', 'mlflow'} & set(sys.modules), sorted({'torch', 'mlflow'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True)
