"""Anomaly scores on l2-normalised [CLS] embeddings (docs/method.md §8); larger score = more anomalous.

Each score is a small fit/score object: ``fit(reference, labels)`` on background jets, ``score(z)``, built from
the config by ``from_config``. ``@register`` puts it in ``SCORES``, the one list of scores: ``anomaly.score``
accepts its keys, ``jbot anomaly`` evaluates all of them, ``jbot sweep anomaly`` builds the one it tunes. A new
score is a class here (and its test). This module imports only numpy, so the config can check names against it;
torch and scikit-learn load when a score is used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from jbot.config import AnomalyConfig


def l2_normalise(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class AnomalyScore(Protocol):
    name: str

    @classmethod
    def from_config(cls, cfg: AnomalyConfig, seed: int) -> AnomalyScore: ...

    def fit(self, reference: np.ndarray, labels: np.ndarray) -> AnomalyScore: ...

    def score(self, z: np.ndarray) -> np.ndarray: ...


SCORES: dict[str, type[AnomalyScore]] = {}


def register(cls: Any) -> Any:
    """Class decorator: the score becomes a choice of ``anomaly.score`` under its ``name``."""
    SCORES[cls.name] = cls
    return cls


def make_score(name: str, cfg: AnomalyConfig, seed: int = 0) -> AnomalyScore:
    return SCORES[name].from_config(cfg, seed)


def make_scores(cfg: AnomalyConfig, seed: int = 0) -> list[AnomalyScore]:
    """Every registered score, in registration order."""
    return [make_score(name, cfg, seed) for name in SCORES]


@register
class KnnScore:
    """Mean Euclidean distance to the k nearest reference vectors (exact, chunked)."""

    name = "knn"

    def __init__(self, k: int = 30, chunk_size: int = 256) -> None:
        self.k, self.chunk_size = k, chunk_size

    @classmethod
    def from_config(cls, cfg: AnomalyConfig, seed: int) -> KnnScore:
        return cls(cfg.knn_k, cfg.chunk_size)

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> KnnScore:
        import torch

        self.reference = torch.as_tensor(reference, dtype=torch.float32)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        import torch

        from jbot.evaluate.knn import knn_search

        dist, _ = knn_search(torch.as_tensor(z, dtype=torch.float32), self.reference, self.k, self.chunk_size)
        return dist.mean(1).double().numpy()


@register
class CosineScore:
    """-tau log((1/k) sum over the top-k of exp(cos / tau)): a soft maximum of the cosine similarity, negated."""

    name = "cosine"

    def __init__(self, k: int = 30, temperature: float = 0.05, chunk_size: int = 256) -> None:
        self.k, self.temperature, self.chunk_size = k, temperature, chunk_size

    @classmethod
    def from_config(cls, cfg: AnomalyConfig, seed: int) -> CosineScore:
        return cls(cfg.cosine_k, cfg.cosine_temp, cfg.chunk_size)

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> CosineScore:
        import torch

        self.reference = torch.as_tensor(l2_normalise(reference), dtype=torch.float32)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        import torch

        from jbot.evaluate.knn import top_cosine

        q = torch.as_tensor(l2_normalise(z), dtype=torch.float32)
        with torch.no_grad():
            top = top_cosine(q, self.reference, self.k, self.chunk_size).double()
        return (-self.temperature * (torch.logsumexp(top / self.temperature, dim=1) - math.log(top.shape[1]))).numpy()


@register
class MahalanobisScore:
    """min over background classes c of (z - mu_c)^T Sigma^-1 (z - mu_c), shared covariance (+ reg I):
    within-class (paper) or the total covariance of the reference (published code)."""

    name = "mahalanobis"

    def __init__(self, covariance: str = "within", reg: float = 1e-8) -> None:
        self.covariance, self.reg = covariance, reg

    @classmethod
    def from_config(cls, cfg: AnomalyConfig, seed: int) -> MahalanobisScore:
        return cls(cfg.mahalanobis_cov, cfg.mahalanobis_reg)

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


@register
class GmmScore:
    """Negative log-likelihood under a Gaussian mixture fitted on the reference set."""

    name = "gmm"

    def __init__(self, components: int = 4, covariance: str = "full", reg: float = 1e-5, seed: int = 0) -> None:
        self.components, self.covariance, self.reg, self.seed = components, covariance, reg, seed

    @classmethod
    def from_config(cls, cfg: AnomalyConfig, seed: int) -> GmmScore:
        return cls(cfg.gmm_components, cfg.gmm_covariance, cfg.gmm_reg, seed)

    def fit(self, reference: np.ndarray, labels: np.ndarray | None = None) -> GmmScore:
        from sklearn.mixture import GaussianMixture

        self.gmm = GaussianMixture(n_components=self.components, covariance_type=self.covariance,
                                   reg_covar=self.reg, random_state=self.seed).fit(reference)
        return self

    def score(self, z: np.ndarray) -> np.ndarray:
        return -self.gmm.score_samples(z)

