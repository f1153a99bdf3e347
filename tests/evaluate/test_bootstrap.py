"""The bootstrap over test jets (``jbot.evaluate.bootstrap``) and the claims ``jbot reproduce`` judges with it: a
paired difference of two models on the same jets, its standard error and 95 % interval, from the runs' per-jet
test outputs (``predictions/test.npz``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jbot.commands import reproduce
from jbot.evaluate.bootstrap import (
    PREDICTIONS,
    BootstrapError,
    Estimate,
    bootstrap,
    jets_hash,
    load_predictions,
    paired_bootstrap,
    resample_counts,
    save_predictions,
)
from tests.commands.test_tables import ORIGINAL_STEPS

N = 2000


def one_hot(pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    probs = np.full((len(pred), n_classes), 0.1 / n_classes)
    probs[np.arange(len(pred)), pred] += 0.9
    return probs


def predicted(y: np.ndarray, right: np.ndarray, n_classes: int = 5) -> np.ndarray:
    """Predictions equal to ``y`` where ``right``, another class elsewhere."""
    return np.where(right, y, (y + 1) % n_classes)


def test_identical_models_differ_by_zero_with_a_zero_width_interval() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, N)
    probs = rng.random((N, 5))
    diff = paired_bootstrap(y, probs, probs.copy())
    assert (diff.value, diff.se, diff.low, diff.high) == (0.0, 0.0, 0.0, 0.0)
    assert diff.n == N and diff.resamples == 1000 and not diff.excludes(0.0)
    yb = rng.integers(0, 2, N)
    score = rng.random(N)
    auc = paired_bootstrap(yb, score, score.copy(), "auc")
    assert (auc.value, auc.se, auc.low, auc.high) == (0.0, 0.0, 0.0, 0.0)


def test_a_model_better_on_every_jet_has_a_positive_interval() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, N)
    a = one_hot(y, 5)  # right on every jet
    b = one_hot(predicted(y, rng.random(N) < 0.6), 5)
    diff = paired_bootstrap(y, a, b)
    assert diff.value == pytest.approx(1.0 - float((b.argmax(1) == y).mean()))
    assert diff.low > 0 and diff.excludes(0.0) and diff.low <= diff.value <= diff.high

    yb = rng.integers(0, 2, N)
    sharp, blurred = yb + rng.normal(0, 0.3, N), yb + rng.normal(0, 1.5, N)
    auc = paired_bootstrap(yb, sharp, blurred, "auc")
    assert auc.excludes(0.0) and auc.value == pytest.approx(roc_auc_score(yb, sharp) - roc_auc_score(yb, blurred))


def test_the_standard_error_falls_like_one_over_root_n() -> None:
    rng = np.random.default_rng(2)
    se = {}
    for n in (1000, 16000):
        y = rng.integers(0, 5, n)
        est = bootstrap(y, predicted(y, rng.random(n) < 0.7))
        se[n] = est.se
        assert est.se == pytest.approx(np.sqrt(0.7 * 0.3 / n), rel=0.15)  # the binomial error of an accuracy
    assert se[1000] / se[16000] == pytest.approx(4.0, rel=0.15)


def test_the_auc_matches_sklearn_on_the_full_set_and_on_a_resample() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, N)
    score = np.round(y + rng.normal(0, 1, N), 1)  # rounded: many tied scores
    probs = np.stack([1 - score, score], axis=1)
    assert bootstrap(y, score, "auc").value == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert bootstrap(y, probs, "auc").value == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    counts = next(resample_counts(N, 3, seed=7))
    assert counts.shape == (3, N) and (counts.sum(1) == N).all()
    drawn = np.repeat(np.arange(N), counts[0])  # the first resample's jets, each as often as it was drawn
    from jbot.evaluate.bootstrap import _RankAuc

    assert _RankAuc(y == 1, score)(counts[:1])[0] == pytest.approx(roc_auc_score(y[drawn], score[drawn]), abs=1e-12)


def test_the_seed_makes_it_reproducible_and_ten_thousand_jets_take_well_under_a_second_each() -> None:
    rng = np.random.default_rng(4)
    n = 10_000
    y = rng.integers(0, 2, n)
    a, b = y + rng.normal(0, 1, n), y + rng.normal(0, 1.1, n)
    start = time.perf_counter()
    first = paired_bootstrap(y, a, b, "auc", seed=11)
    seconds = time.perf_counter() - start
    assert paired_bootstrap(y, a, b, "auc", seed=11) == first
    assert paired_bootstrap(y, a, b, "auc", seed=12) != first
    assert seconds < 5  # about 0.4 s alone; generous on shared cores
    with pytest.raises(BootstrapError, match="binary"):
        paired_bootstrap(y, rng.random((n, 3)), rng.random((n, 3)), "auc")
    with pytest.raises(BootstrapError, match="metric is one of"):
        bootstrap(y, a, "f1")


def test_predictions_round_trip_small_and_pair_only_on_the_same_jets(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    y, probs = rng.integers(0, 5, N), rng.random((N, 5))
    jet, origin = rng.random((N, 4)), rng.integers(0, 5, N)
    path = save_predictions(tmp_path / PREDICTIONS, y, probs, fingerprint="abc", jets=jets_hash(jet, origin),
                            kind="classifier")
    p = load_predictions(path)
    assert p.probs.dtype == np.float32 and (p.pred == probs.argmax(1)).all() and (p.y == y).all()
    assert (p.fingerprint, p.kind) == ("abc", "classifier") and path.stat().st_size < 60_000
    other = save_predictions(tmp_path / "other.npz", y, probs, fingerprint="abc",
                             jets=jets_hash(jet[::-1], origin[::-1]), kind="classifier")
    assert p.paired_with(load_predictions(path)) and not p.paired_with(load_predictions(other))


class ArtifactClient:
    """What ``collect`` reads of an MLflow client: each run's metrics and its ``predictions/test.npz``."""

    def __init__(self, metrics: dict[str, dict[str, float]], files: dict[str, Path]) -> None:
        self.metrics, self.files = metrics, files

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(data=SimpleNamespace(metrics=self.metrics[run_id]))

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        if run_id not in self.files:
            raise OSError(f"run {run_id} has no {path}")
        assert path == PREDICTIONS
        return shutil.copy(self.files[run_id], Path(dst_path) / "test.npz")


def test_collect_turns_the_runs_per_jet_outputs_into_claims_with_intervals(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    done = {name: f"run-{name}" for name in ORIGINAL_STEPS}
    metrics: dict[str, dict[str, float]] = {run: {} for run in done.values()}
    y5, yb = rng.integers(0, 5, N), rng.integers(0, 2, N)
    jets5 = jets_hash(rng.random((N, 4)), y5)
    jetsb = jets_hash(rng.random((N, 4)), yb)
    first = np.arange(N) < 1000
    outputs = {  # step -> (labels, probabilities, jets hash, kind)
        "probe-5class": (y5, one_hot(predicted(y5, np.arange(N) < 1600), 5), jets5, "knn"),
        "probe-random": (y5, one_hot(predicted(y5, first), 5), jets5, "knn"),
        "finetune-10%-pretrained": (y5, one_hot(predicted(y5, np.arange(N) < 1200), 5), jets5, "classifier"),
        "finetune-10%-scratch": (y5, one_hot(predicted(y5, first), 5), jets5, "classifier"),
        # 110 jets right only here, 100 only in scratch: +0.005, with an interval that reaches below 0
        "finetune-100%-pretrained": (y5, one_hot(predicted(y5, first | ((np.arange(N) >= 1000) & (np.arange(N) < 1110))), 5),
                                     jets5, "classifier"),
        "finetune-100%-scratch": (y5, one_hot(predicted(y5, first | ((np.arange(N) >= 1200) & (np.arange(N) < 1300))), 5),
                                  jets5, "classifier"),
        "finetune-tqg-pretrained": (yb, np.stack([1 - yb, yb], 1) * 0.5 + rng.normal(0, 0.2, (N, 2)), jetsb,
                                    "classifier"),
        "finetune-tqg-scratch": (yb, np.stack([1 - yb, yb], 1) * 0.5 + rng.normal(0, 0.4, (N, 2)), jetsb,
                                 "classifier"),
    }
    files = {done[step]: save_predictions(tmp_path / step / PREDICTIONS, y, probs, fingerprint="fp", jets=jets,
                                          kind=kind) for step, (y, probs, jets, kind) in outputs.items()}
    metrics[done["finetune-tqg-pretrained"]] = {"test/auc": 0.96, "test/auc_std": 0.01}
    metrics[done["finetune-tqg-scratch"]] = {"test/auc": 0.95, "test/auc_std": 0.01}
    metrics[done["anomaly"]] = {f"test/knn/{s}/{k}": v for s in ("W", "Z", "t") for k, v in
                                (("auc", 0.6), ("auc_std", 0.02))}
    summary = reproduce.collect(ArtifactClient(metrics, files), done)
    claims = {c["name"]: c for c in summary["claims"]}

    gain = claims["pretraining_gain"]
    assert gain["holds"] and not gain["within_error"] and gain["paired"]["value"] == pytest.approx(0.3)
    assert gain["text"].startswith("pre-training gain: +0.300 ± 0.0") and gain["text"].endswith(
        "5-class k-NN accuracy over a random encoder (needs >= +0.10; paired bootstrap over 2,000 test jets, "
        f"95 % interval [{gain['paired']['low']:+.3f}, {gain['paired']['high']:+.3f}] lies above +0.10)")
    ten = claims["finetune_10"]
    assert ten["holds"] and not ten["within_error"] and ten["text"].startswith(
        "fine-tuned above from scratch with 10% of the labels: +0.100 ± 0.007 accuracy (needs > 0; paired bootstrap "
        "over 2,000 test jets, 95 % interval [+0.08") and ten["text"].endswith("] excludes 0)")
    hundred = claims["finetune_100"]
    assert hundred["holds"] and hundred["within_error"] and hundred["paired"]["low"] < 0 < hundred["paired"]["value"]
    assert hundred["text"].endswith("does not exclude 0: within error)") and "+0.005 ± 0.007 accuracy" in hundred["text"]
    assert reproduce.verdict(hundred) == "holds, within error" and reproduce.verdict(ten) == "holds"
    tqg = claims["top_tagging"]
    a, b = (outputs[f"finetune-tqg-{k}"][1][:, 1].astype(np.float32) for k in ("pretrained", "scratch"))
    assert tqg["paired"]["value"] == pytest.approx(roc_auc_score(yb, a) - roc_auc_score(yb, b), abs=1e-12)
    assert tqg["holds"] and tqg["text"].startswith("top tagging, fine-tuned above from scratch: +0.") and \
        tqg["text"].endswith("] excludes 0)") and " AUC (needs > 0; paired bootstrap over 2,000 test jets" in tqg["text"]
    assert claims["anomaly"]["text"] == ("anomaly (k-NN score, q+g encoder): AUC W 0.600 ± 0.020, Z 0.600 ± 0.020, "
                                         "t 0.600 ± 0.020 (needs > 0.55 each; ± fold std)")

    rows = {r["quantity"]: r for r in summary["rows"]}
    assert rows["probe-5class: test/knn_acc"]["se"] == pytest.approx(np.sqrt(0.8 * 0.2 / N), rel=0.15)
    assert "se" not in rows["probe-5class: test/linear_acc"]  # the linear probe's outputs are not kept
    assert "se" in rows["finetune-tqg-scratch: test/auc"] and "se" not in rows["anomaly: test/knn/W/auc"]

    # outputs on other jets are not paired: the claim falls back to the full-set numbers and the fold std
    y, probs, _, kind = outputs["finetune-tqg-scratch"]
    save_predictions(files[done["finetune-tqg-scratch"]], y, probs, fingerprint="fp", kind=kind,
                     jets=jets_hash(rng.random((N, 4)), yb))
    metrics[done["finetune-tqg-scratch"]]["test/auc"] = 0.955
    unpaired = {c["name"]: c for c in reproduce.collect(ArtifactClient(metrics, files), done)["claims"]}
    assert unpaired["top_tagging"] == {"name": "top_tagging", "holds": False, "text":
                                       "top tagging, fine-tuned above from scratch: +0.0050 AUC (fold std 0.0100)"}
    assert unpaired["finetune_10"] == ten

    summary.update(scale="demo", budget="minutes", size="S", parent="parent-run", data="jets")
    report = reproduce.write_report(tmp_path / "reproduce.html", summary).read_text()
    assert "<b>holds, within error</b>: fine-tuned above from scratch with 100%" in report
    assert "paired bootstrap" in report and "fold std" in report and "(SE 0.0" in report


def test_a_claims_line_says_where_its_interval_lies() -> None:
    claim = next(c for c in reproduce.CLAIMS if c.name == "top_tagging")
    below = Estimate(-0.1, 0.02, -0.14, -0.06, 200, 1000, 0, 0.95)
    entry = reproduce.paired_verdict(claim, below)
    assert not entry["holds"] and not entry["within_error"] and entry["text"] == (
        "top tagging, fine-tuned above from scratch: -0.1000 ± 0.0200 AUC (needs > 0; paired bootstrap over 200 test "
        "jets, 95 % interval [-0.1400, -0.0600] lies below 0)")
    gain = next(c for c in reproduce.CLAIMS if c.name == "pretraining_gain")
    close = reproduce.paired_verdict(gain, Estimate(0.12, 0.02, 0.08, 0.16, 200, 1000, 0, 0.95))
    assert close["holds"] and close["within_error"] and close["text"].endswith(
        "[+0.080, +0.160] does not lie above +0.10: within error)")
    assert reproduce.verdict(close) == "holds, within error"
