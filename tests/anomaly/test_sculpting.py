"""SIC, ρ(score, mass) and 1/JSD against direct numpy / scipy computations on synthetic scores, and in a real
`jbot anomaly` run on JetNet-layout files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import spearmanr
from typer.testing import CliRunner

from jbot.anomaly.sculpting import (
    JSD_INV_CAP,
    jsd,
    jsd_inv_after_cut,
    mass_rho,
    max_sic,
    sculpting_metrics,
    sic_curve,
)
from jbot.cli import app
from tests.conftest import NewStore, set_args, tiny_checkpoint, write_fake_folder

runner = CliRunner()


def test_sic_of_a_perfect_and_a_random_score() -> None:
    rng = np.random.default_rng(0)
    sig = np.r_[np.ones(300, bool), np.zeros(400, bool)]
    perfect = np.r_[rng.uniform(2, 3, 300), rng.uniform(0, 1, 400)]
    # every signal jet passes before any background one: the best working point is eps_s = 1 at one background jet
    assert max_sic(sig, perfect) == pytest.approx(1 / np.sqrt(1 / 400))
    big = np.r_[np.ones(50_000, bool), np.zeros(50_000, bool)]
    random = rng.uniform(size=100_000)
    eps_s, eps_b, sic = sic_curve(big, random)
    mid = (eps_b > 0.05) & (eps_b < 0.95)
    np.testing.assert_allclose(sic[mid], np.sqrt(eps_s[mid]), rtol=0.05)  # random: SIC = sqrt(eps_s)


def test_sic_curve_against_a_direct_count() -> None:
    rng = np.random.default_rng(1)
    sig = rng.uniform(size=200) < 0.4
    score = np.round(rng.normal(sig * 1.0, 1.0), 1)  # ties included
    eps_s, eps_b, sic = sic_curve(sig, score)
    for t in np.unique(score)[::7]:
        s, b = (score[sig] >= t).mean(), (score[~sig] >= t).mean()
        if b > 0:
            i = np.flatnonzero(np.isclose(eps_b, b) & np.isclose(eps_s, s))
            assert len(i) and sic[i[0]] == pytest.approx(s / np.sqrt(b))


def test_jsd_of_identical_and_disjoint_histograms_and_against_scipy() -> None:
    p = np.array([1.0, 4.0, 2.0, 0.0])
    assert jsd(p, p) == pytest.approx(0.0)
    assert jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    q = np.array([2.0, 1.0, 1.0, 3.0])
    assert jsd(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2)


def test_mass_rho_and_jsd_after_cuts() -> None:
    rng = np.random.default_rng(2)
    mass = rng.uniform(10, 200, 2000)
    assert mass_rho(mass, mass) == pytest.approx(1.0)  # a score equal to the mass
    noise = rng.normal(size=2000)
    assert mass_rho(noise, mass) == pytest.approx(spearmanr(noise, mass).statistic)
    # a score equal to the mass keeps only heavy jets: strong sculpting; an independent one keeps the shape
    assert jsd_inv_after_cut(mass, mass, 0.1) < 2.0 < jsd_inv_after_cut(noise, mass, 0.5)
    assert np.isnan(jsd_inv_after_cut(noise, mass, 0.001))  # 2 jets after the cut: not resolved
    assert jsd_inv_after_cut(np.zeros(2000), mass, 1.0) == JSD_INV_CAP  # no cut: identical shapes
    origin = np.repeat([0, 1, 2], [800, 800, 400])
    metrics = sculpting_metrics(mass[: len(origin)], origin, mass, (0, 1), ("q", "g", "W"))
    assert metrics["mass_rho/q"] == pytest.approx(1.0) and set(metrics) == {
        "mass_rho/q", "mass_rho/g", "mass_jsd_inv/eps_b_0.5", "mass_jsd_inv/eps_b_0.1", "mass_jsd_inv/eps_b_0.01"}


@pytest.mark.integration
def test_jbot_anomaly_logs_and_prints_sic_and_sculpting(tmp_path: Path, new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 300)
    encoder = tiny_checkpoint(tmp_path / "enc.pt", seed=3)
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["anomaly", "--model", str(encoder), "--data", str(data), "--out",
                                 str(tmp_path / "an"), "--tracking-uri", store, *set_args([
                                     "data.n_train=200", "data.n_val=40", "data.n_test=100", "evaluate.n_folds=2",
                                     "anomaly.reference_size=100", "anomaly.knn_k=5", "anomaly.cosine_k=5",
                                     "anomaly.gmm_components=2", "tracking.log_system_metrics=false"])])
    assert result.exit_code == 0, result.output
    assert "max SIC W" in result.output and "ρ(score, m) q" in result.output and "1/JSD at ε_b = 0.1" in result.output
    metrics = json.loads((tmp_path / "an" / "anomaly_metrics.json").read_text())
    for score in ("knn", "cosine", "mahalanobis", "gmm"):
        assert metrics[f"{score}/W/max_sic"] > 0 and f"{score}/combined/max_sic" in metrics
        assert -1 <= metrics[f"{score}/mass_rho/q"] <= 1 and -1 <= metrics[f"{score}/mass_rho/g"] <= 1
        assert metrics[f"{score}/mass_jsd_inv/eps_b_0.1"] > 0
    report = (tmp_path / "an" / "anomaly_report.html").read_text()
    assert "Sensitivity and mass sculpting" in report and "Significance improvement" in report
    assert "Background jet mass before and after" in report
    # the contaminated reference sets (defaults 0.001, 0.01, 0.05 of 100 references: 1, 1 and 5 signal jets)
    for f in ("0.001", "0.01", "0.05"):
        for name in ("W", "Z", "t", "combined"):
            assert 0 <= metrics[f"knn/contaminated_{f}/{name}/auc"] <= 1
            assert f"gmm/contaminated_{f}/{name}/max_sic" in metrics
    assert "contaminated reference set" in result.output and "Contaminated reference set" in report


@pytest.mark.integration
def test_contamination_needs_signal_jets_and_fractions_in_range(tmp_path: Path, new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 200)
    encoder = tiny_checkpoint(tmp_path / "enc.pt", seed=4)
    store = new_store(tmp_path / "store")
    base = ["anomaly", "--model", str(encoder), "--data", str(data), "--tracking-uri", store, "--out",
            str(tmp_path / "an")]
    small = ["data.n_train=100", "data.n_test=60", "evaluate.n_folds=2", "anomaly.reference_size=80",
             "anomaly.knn_k=5", "anomaly.cosine_k=5", "anomaly.gmm_components=2", "tracking.log_system_metrics=false"]
    # a fraction that needs more signal jets than the validation split holds: said, the others still run
    ok = runner.invoke(app, [*base, *set_args([*small, "data.n_val=20", "anomaly.contamination=[0.01,0.3]"])])
    assert ok.exit_code == 0, ok.output
    assert "contamination 0.3 with W: needs 24 signal jets in the reference, the validation split holds 10" in ok.output
    metrics = json.loads((tmp_path / "an" / "anomaly_metrics.json").read_text())
    assert "knn/contaminated_0.01/W/auc" in metrics and "knn/contaminated_0.3/W/auc" not in metrics
    bad = runner.invoke(app, [*base, *set_args([*small, "data.n_val=20", "anomaly.contamination=[0.5]"])])
    assert bad.exit_code == 2 and "anomaly.contamination: each fraction must lie in (0, 0.5): 0.5 does not" in (
        bad.output)
    none = runner.invoke(app, [*base, *set_args([*small, "data.n_val=0"])])
    assert none.exit_code == 2 and "the validation split holds no signal jets" in none.output, none.output
    off = runner.invoke(app, [*base, *set_args([*small, "data.n_val=0", "anomaly.contamination=[]"])])
    assert off.exit_code == 0, off.output
    # jets without a usable mass: refused in one line, unless the sculpting metrics are turned off
    quick = [*small, "data.n_val=20", "anomaly.contamination=[]"]
    # (a NaN mass is refused earlier, by the reader, which names the dataset)
    for value, why in ((np.nan, "dataset 'jet_features': NaN or inf"), (0.0, "is missing or all zero")):
        for c in ("q", "g", "w", "z", "t"):
            with h5py.File(data / f"{c}.hdf5", "r+") as f:
                jets = f["jet_features"][...]
                jets[:, 2] = 0.0
                jets[::7, 2] = value
                f["jet_features"][...] = jets
        refused = runner.invoke(app, [*base, *set_args(quick)])
        assert refused.exit_code == 2, refused.output
        lines = refused.output.strip().splitlines()
        assert len(lines) == 1 and why in lines[0], refused.output
    assert "set anomaly.sculpting=false" in lines[0], refused.output
    scored = runner.invoke(app, [*base, *set_args([*quick, "anomaly.sculpting=false"])])
    assert scored.exit_code == 0, scored.output
    metrics = json.loads((tmp_path / "an" / "anomaly_metrics.json").read_text())
    assert "knn/combined/auc" in metrics and not any("mass_" in k for k in metrics)
    assert "anomaly.sculpting=false" in (tmp_path / "an" / "anomaly_report.html").read_text()


def test_a_study_may_optimise_max_sic_or_a_decorrelated_auc() -> None:
    from jbot.commands.sweep_kinds import KINDS

    for objective in ("val/combined/auc", "val/combined/max_sic", "val/W/max_sic", "val/combined/auc_decorrelated"):
        KINDS["anomaly"].check_objective(objective, "space.yaml")
    assert "val/anomaly/combined/auc_decorrelated" in KINDS["pretrain"].objectives
    from jbot.anomaly.detect import evaluate_scores
    from jbot.anomaly.scores import make_score
    from jbot.config import load_config

    cfg = load_config(None, ["anomaly.knn_k=3", "anomaly.decorrelation=0.5"]).anomaly
    rng = np.random.default_rng(5)
    origin = np.repeat(np.arange(5), 60)
    target = rng.normal(size=(300, 4)) + (origin >= 2)[:, None]
    mass = rng.uniform(10, 200, 300)
    metrics, _ = evaluate_scores([make_score("knn", cfg, 0)], rng.normal(size=(100, 4)), rng.integers(0, 2, 100),
                                 target, origin, 2, 0, mass=mass, decorrelation=cfg.decorrelation)
    worst = max(abs(metrics["knn/mass_rho/q"]), abs(metrics["knn/mass_rho/g"]))
    assert metrics["knn/combined/auc_decorrelated"] == pytest.approx(metrics["knn/combined/auc"] - 0.5 * worst)


@pytest.mark.integration
def test_an_anomaly_study_on_max_sic(tmp_path: Path, new_store: NewStore) -> None:
    import optuna

    data = write_fake_folder(tmp_path / "jets", 200)
    encoder = tiny_checkpoint(tmp_path / "enc.pt", seed=5)
    space = tmp_path / "sic.yaml"
    space.write_text("objective: val/combined/max_sic\ndirection: maximize\nparams:\n"
                     "  anomaly.knn_k: {type: int, low: 3, high: 10}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = runner.invoke(app, ["sweep", "anomaly", "--model", str(encoder), "--trials", "2", "--data", str(data),
                                 "--space", str(space), "--storage", storage, "--study-name", "sic",
                                 "--tracking-uri", new_store(tmp_path / "store"),
                                 *set_args(["anomaly.reference_size=80", "tracking.log_system_metrics=false"])])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="sic", storage=storage)
    assert study.metric_names == ["val/combined/max_sic"] and study.best_value > 0
