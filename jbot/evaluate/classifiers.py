"""The two probe classifiers of a frozen embedding (docs/method.md §7), used by ``jbot.evaluate.probe``: k-NN (k = 30,
uniform, Euclidean) and linear (standardise + multinomial logistic regression, L2, C = 1)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jbot.config import ProbeConfig
from jbot.evaluate.knn import knn_search


def knn_probe(train_emb: np.ndarray, y_train: np.ndarray, test_emb: np.ndarray, k: int = 30,
              n_classes: int | None = None) -> np.ndarray:
    """Vote fractions (N, C) of the k nearest training jets; argmax = the uniform-vote prediction."""
    n_classes = n_classes or int(y_train.max()) + 1
    _, idx = knn_search(torch.as_tensor(test_emb), torch.as_tensor(train_emb), k)
    votes = torch.nn.functional.one_hot(torch.as_tensor(y_train)[idx], n_classes).sum(1)  # (N, k) -> (N, C)
    return (votes.double() / idx.shape[1]).numpy()


def linear_probe(train_emb: np.ndarray, y_train: np.ndarray, test_emb: np.ndarray, cfg: ProbeConfig,
                 seed: int = 0) -> np.ndarray:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.linear_c, max_iter=cfg.linear_max_iter,
                                                               random_state=seed))
    model.fit(train_emb, y_train)
    return model.predict_proba(test_emb)
