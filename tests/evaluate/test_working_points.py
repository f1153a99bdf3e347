"""A working point the test set cannot resolve is never quoted with an error: every fixed-eps_b (or FPR) metric
carries the background jets it stands on, and below MIN_BACKGROUND it is marked ``_unresolved`` in the metrics,
the console, the MLflow run and the reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.anomaly.detect import signal_metrics
from jbot.cli import app
from jbot.evaluate.metrics import MIN_BACKGROUND, classification_metrics, rejection_at_eps_s, shown
from tests.conftest import NewStore

runner = CliRunner()


def test_each_working_point_knows_its_background_jets() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(300, int), np.ones(300, int)]  # 300 background jets
    p1 = np.clip(0.5 * y + rng.uniform(0, 0.6, 600), 0, 1)
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ("qcd", "top"), n_folds=3)
    assert m["n_test"] == 600 and m["n_background"] == 300 and m["chance_acc"] == 0.5
    assert m["eps_s_at_0.1_n_bkg"] == 30 and "eps_s_at_0.1_std" in m and "eps_s_at_0.1_unresolved" not in m
    for target, n in ((0.01, 3), (0.001, 0)):
        key = f"eps_s_at_{target:g}"
        assert m[f"{key}_n_bkg"] == n < MIN_BACKGROUND and m[f"{key}_unresolved"] == 1
        assert f"{key}_std" not in m, "no fold std beside a number the test set cannot resolve"
        assert shown(m, key) == f"{m[key]:.4f} (not resolved: {n} bkg jets)"
    assert shown(m, "acc") == f"{m['acc']:.4f} ± {m['acc_std']:.4f}"

    origin = np.r_[np.zeros(150, int), np.ones(150, int), np.full(40, 2), np.full(40, 3), np.full(40, 4)]
    a = signal_metrics(rng.normal(size=len(origin)) + (origin >= 2), origin, n_folds=2)
    assert a["W/n_background"] == 300 and a["W/n_signal"] == 40
    assert a["W/tpr_at_fpr_0.1_n_bkg"] == 30 and "W/tpr_at_fpr_0.1_std" in a
    assert a["combined/tpr_at_fpr_0.01_unresolved"] == 1 and "combined/tpr_at_fpr_0.01_std" not in a


def test_background_rejection_at_fixed_signal_efficiency_by_hand() -> None:
    # 4 signal jets scored 0.9, 0.8, 0.4, 0.2 and 5 background jets 0.7, 0.5, 0.3, 0.1, 0.05: reaching 50 % of the
    # signal (score >= 0.8) passes no background jet; 75 % (>= 0.4) passes 2 of 5
    sig = np.r_[np.ones(4, bool), np.zeros(5, bool)]
    score = np.r_[0.9, 0.8, 0.4, 0.2, 0.7, 0.5, 0.3, 0.1, 0.05]
    assert rejection_at_eps_s(sig, score, 0.5) == 5.0  # none passes: reported as N_b, a lower bound
    assert rejection_at_eps_s(sig, score, 0.75) == pytest.approx(5 / 2)
    assert rejection_at_eps_s(sig, score, 1.0) == pytest.approx(5 / 3)
    rng = np.random.default_rng(1)
    big = np.r_[np.ones(20_000, bool), np.zeros(20_000, bool)]
    assert rejection_at_eps_s(big, rng.uniform(size=40_000), 0.3) == pytest.approx(1 / 0.3, rel=0.05)  # random
    m = classification_metrics(big.astype(int), np.c_[1 - (s := rng.uniform(size=40_000)), s], ("q", "t"), 3)
    assert {"rejection_at_0.3", "rejection_at_0.5", "rejection_at_0.5_std"} <= set(m)
    assert m["rejection_at_0.5_n_bkg"] == pytest.approx(10_000, rel=0.05) and "rejection_at_0.5_unresolved" not in m
    small = classification_metrics(sig.astype(int), np.c_[1 - score, score], ("q", "t"), 3)
    assert small["rejection_at_0.5"] == 5.0 and small["rejection_at_0.5_unresolved"] == 1  # on 1 background jet
    assert small["rejection_at_0.5_n_bkg"] == 1 and "rejection_at_0.5_std" not in small


def test_a_small_top_tagging_test_set_is_marked_in_console_and_run(fake_data: Path, tmp_path: Path,
                                                                   new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    sets = ["data.n_train=200", "data.n_val=50", "data.n_test=100", "finetune.epochs=1", "finetune.batch_size=64",
            "tracking.log_system_metrics=false", "evaluate.n_folds=2"]
    result = runner.invoke(app, ["finetune", "--from-scratch", "--data", str(fake_data), "--task", "tqg", "--out",
                                 str(tmp_path / "ft"), "--tracking-uri", store,
                                 *[a for s in sets for a in ("--set", s)]], terminal_width=250)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.replace("│", " ").split())
    assert flat.count("resolved:") == 3, flat  # eps_b = 0.1, 0.01, 0.001 on 50 background jets: none resolved
    assert "100 test jets, 50 of them background; chance: accuracy 0.50, AUC 0.50" in flat
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("jbot-finetune").experiment_id])
    m = run.data.metrics
    assert m["test/eps_s_at_0.001_unresolved"] == 1 and "test/eps_s_at_0.001_std" not in m
    assert m["test/n_background"] == 50 and m["test/chance_acc"] == 0.5
