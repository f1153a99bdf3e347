"""Anomaly scores on l2-normalised [CLS] embeddings (SPEC §8); larger score = more anomalous.

Each score is a small fit/score object: ``fit(reference, labels)`` on background jets, ``score(z)``.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from jbot.config import AnomalyConfig
from jbot.evaluate.knn import knn_search, top_cosine


def l2_normalise(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class AnomalyScore(Protocol):
    name: str

    def fit(self, reference: np.ndarray, labels: np.ndarray) -> AnomalyScore: ...

    def score(self, z: np.ndarray) -> np.ndarray: ...


class KnnScore:
    """Mean Euclidean distance to the k nearest reference vectors (exact, chunked)."""

    name = "knn"

    def __init__(self, k: int = 30, chunk_size: int = 256) -> None:
        self.k, self.chunk_size = k, chunk_size

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> KnnScore:
        self.reference = torch.as_tensor(reference, dtype=torch.float32)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        dist, _ = knn_search(torch.as_tensor(z, dtype=torch.float32), self.reference, self.k, self.chunk_size)
        return dist.mean(1).double().numpy()


class CosineScore:
    """-tau log((1/k) sum over the top-k of exp(cos / tau)): a soft maximum of the cosine similarity, negated."""

    name = "cosine"

    def __init__(self, k: int = 30, temperature: float = 0.05, chunk_size: int = 256) -> None:
        self.k, self.temperature, self.chunk_size = k, temperature, chunk_size

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> CosineScore:
        self.reference = torch.as_tensor(l2_normalise(reference), dtype=torch.float32)
        return self

    @torch.no_grad()
    def score(self, z: np.ndarray) -> np.ndarray:
        q = torch.as_tensor(l2_normalise(z), dtype=torch.float32)
        top = top_cosine(q, self.reference, self.k, self.chunk_size).double()
        return (-self.temperature * (torch.logsumexp(top / self.temperature, dim=1) - math.log(top.shape[1]))).numpy()


class MahalanobisScore:
    """min over background classes c of (z - mu_c)^T Sigma^-1 (z - mu_c), shared covariance (+ reg I):
    within-class (paper) or the total covariance of the reference (published code)."""

    name = "mahalanobis"

    def __init__(self, covariance: str = "within", reg: float = 1e-8) -> None:
        self.covariance, self.reg = covariance, reg

    def fit(self, reference: np.ndarray, labels: np.ndarray) -> MahalanobisScore:
        z = np.asarray(reference, dtype=np.float64)
        classes = np.unique(labels)
        self.means = np.stack([z[labels == c].mean(0) for c in classes])  # (C, D)
        if self.covariance == "within":
            centred = z - self.means[np.searchsorted(classes, labels)]
        else:
            centred = z - z.mean(0)
        cov = centred.T @ centred / len(z) + self.reg * np.eye(z.shape[1])
        self.precision = np.linalg.inv(cov)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        d = z[:, None, :] - self.means[None, :, :]  # (N, C, D)
        return np.einsum("ncd,de,nce->nc", d, self.precision, d).min(axis=1)


class GmmScore:
    """Negative log-likelihood under a Gaussian mixture fitted on the reference set."""

    name = "gmm"

    def __init__(self, components: int = 4, covariance: str = "full", reg: float = 1e-5, seed: int = 0) -> None:
        self.components, self.covariance, self.reg, self.seed = components, covariance, reg, seed

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> GmmScore:
        self.gmm = GaussianMixture(n_components=self.components, covariance_type=self.covariance,
                                   reg_covar=self.reg, random_state=self.seed).fit(reference)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        return -self.gmm.score_samples(z)


def make_scores(cfg: AnomalyConfig, seed: int = 0) -> list[AnomalyScore]:
    return [
        KnnScore(cfg.knn_k, cfg.chunk_size),
        CosineScore(cfg.cosine_k, cfg.cosine_temp, cfg.chunk_size),
        MahalanobisScore(cfg.mahalanobis_cov, cfg.mahalanobis_reg),
        GmmScore(cfg.gmm_components, cfg.gmm_covariance, cfg.gmm_reg, seed),
    ]
