"""Clustering metrics of a frozen embedding (asked for by the paper's referee): k-means purity, ARI and NMI with
C clusters, silhouette of the true classes on a subsample."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from jbot.config import ProbeConfig


def clustering_metrics(emb: np.ndarray, y: np.ndarray, n_clusters: int, cfg: ProbeConfig,
                       seed: int = 0) -> dict[str, float]:
    """k-means with C clusters: purity (share of jets in their cluster's majority class), ARI and NMI; silhouette
    of the true classes on a subsample."""
    clusters = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(emb)
    table = np.zeros((n_clusters, int(y.max()) + 1))
    np.add.at(table, (clusters, y), 1)
    rng = np.random.default_rng(seed)
    sub = rng.permutation(len(y))[: cfg.silhouette_samples]
    sil = silhouette_score(emb[sub], y[sub]) if len(np.unique(y[sub])) > 1 else float("nan")
    return {"purity": float(table.max(1).sum() / len(y)), "ari": float(adjusted_rand_score(y, clusters)),
            "nmi": float(normalized_mutual_info_score(y, clusters)),
            "silhouette": float(sil)}
