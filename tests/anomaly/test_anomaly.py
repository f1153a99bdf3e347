"""Anomaly scores against direct NumPy / scikit-learn computations; metrics on hand-made cases. (`jbot anomaly` from
a registry alias, after pre-training and `register best`, runs in tests/test_cli_env.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from jbot.anomaly.detect import signal_metrics
from jbot.anomaly.scores import SCORES, CosineScore, GmmScore, KnnScore, MahalanobisScore, l2_normalise, make_score


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = l2_normalise(rng.normal(size=(400, 6)) + np.r_[[1.0] * 3, [0.0] * 3])
    labels = (rng.random(400) < 0.5).astype(int)
    ref[labels == 1] = l2_normalise(ref[labels == 1] + 0.5)
    test = l2_normalise(rng.normal(size=(150, 6)))
    return ref, labels, test


def test_score_registry_is_the_one_list_of_scores() -> None:
    """``anomaly.score`` accepts exactly the registered scores; each builds from the config under its own name;
    the shipped anomaly sweep searches only registered ones."""
    from jbot.config import ConfigError, JbotConfig, with_overrides
    from jbot.sweeps.spaces import load_space

    ref, labels, test = _data()
    for name in SCORES:
        cfg = with_overrides(JbotConfig(), {"anomaly.score": name})
        score = make_score(cfg.anomaly.score, cfg.anomaly)
        assert score.name == name
        assert np.isfinite(score.fit(ref, labels).score(test)).all()
    with pytest.raises(ConfigError, match="choose from " + ", ".join(SCORES)):
        with_overrides(JbotConfig(), {"anomaly.score": "isolation_forest"})
    assert set(load_space("anomaly").params["anomaly.score"].choices or ()) <= set(SCORES)


def test_knn_against_sklearn_for_several_chunks() -> None:
    ref, labels, test = _data()
    expected = NearestNeighbors(n_neighbors=7).fit(ref).kneighbors(test)[0].mean(1)
    for chunk in (1, 13, 150, 10_000):
        np.testing.assert_allclose(KnnScore(7, chunk).fit(ref).score(test), expected, rtol=1e-5, atol=1e-6)


def test_cosine_against_numpy() -> None:
    ref, labels, test = _data()
    sims = test @ ref.T
    top = -np.sort(-sims, axis=1)[:, :9]
    expected = -0.05 * np.log(np.mean(np.exp(top / 0.05), axis=1))
    for chunk in (7, 1000):
        np.testing.assert_allclose(CosineScore(9, 0.05, chunk).fit(ref).score(test), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["within", "total"])
def test_mahalanobis_against_explicit_inverse(kind: str) -> None:
    ref, labels, test = _data()
    means = [ref[labels == c].mean(0) for c in (0, 1)]
    if kind == "within":
        centred = np.concatenate([ref[labels == c] - means[c] for c in (0, 1)])
    else:
        centred = ref - ref.mean(0)
    cov = centred.T @ centred / len(ref) + 1e-3 * np.eye(6)
    inv = np.linalg.inv(cov)
    expected = np.min([[(z - m) @ inv @ (z - m) for m in means] for z in test], axis=1)
    got = MahalanobisScore(kind, 1e-3).fit(ref, labels).score(test)
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_gmm_against_sklearn() -> None:
    ref, labels, test = _data()
    gmm = GaussianMixture(3, covariance_type="full", reg_covar=1e-5, random_state=0).fit(ref)
    np.testing.assert_allclose(GmmScore(3, "full", 1e-5, 0).fit(ref).score(test), -gmm.score_samples(test))


def test_signal_metrics_hand_made() -> None:
    # background scores 0..9 (q and g), W at 10..14 (perfectly separated), Z at 0.5..4.5 (half below)
    origin = np.r_[np.zeros(5, int), np.ones(5, int), np.full(5, 2), np.full(5, 3)]
    scores = np.r_[np.arange(10.0), np.arange(10.0, 15.0), np.arange(0.5, 5.0)]
    m = signal_metrics(scores, origin, n_folds=2)
    assert m["W/auc"] == 1.0 and m["W/tpr_at_fpr_0.1"] == 1.0
    assert m["Z/auc"] == pytest.approx(np.mean([(z > np.arange(10.0)).mean() for z in np.arange(0.5, 5.0)]))
    assert m["Z/tpr_at_fpr_0.1"] == 0.0  # the best Z (4.5) is beaten by 5 of 10 background jets
    assert "t/auc" not in m and "combined/auc" in m
