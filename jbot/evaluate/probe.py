"""``jbot probe``: k-NN and linear probes plus clustering metrics of a frozen encoder on a split (docs/method.md §7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from jbot.config import ProbeConfig
from jbot.data.splits import Split
from jbot.evaluate.classifiers import knn_probe, linear_probe
from jbot.evaluate.clustering import clustering_metrics
from jbot.evaluate.embed import embed
from jbot.evaluate.metrics import classification_metrics
from jbot.model.encoder import JetEncoder


@dataclass
class ProbeResult:
    metrics: dict[str, float]  # stable names: test/knn_acc, test/knn_auc_t, test/linear_acc, test/purity, ...
    class_names: tuple[str, ...]
    test_embedding: np.ndarray
    knn_probs: np.ndarray
    linear_probs: np.ndarray

    def rows(self, prefix: str = "") -> dict[str, dict[str, float]]:
        """The k-NN and linear probes' test metrics as table rows ``{label: {"test/acc": ..., ...}}``."""
        return {f"{prefix}{label}": {k.replace(f"test/{name}_", "test/"): v for k, v in self.metrics.items()
                                     if k.startswith(f"test/{name}_")}
                for name, label in (("knn", "k-NN"), ("linear", "linear"))}


def run_probe(encoder: JetEncoder, split: Split, cfg: ProbeConfig, device: torch.device | str = "cpu",
              seed: int = 0, n_folds: int = 10, on_phase: Callable[[str], None] | None = None) -> ProbeResult:
    """The probes and clustering; ``on_phase`` hears each phase as it starts (the CLI's status line)."""
    def phase(text: str) -> None:
        if on_phase is not None:
            on_phase(text)

    encoder = encoder.to(device)
    phase(f"embedding {len(split.train.x):,} training and {len(split.test.x):,} test jets")
    train_emb, _ = embed(encoder, split.train.x, device=device)
    test_emb, _ = embed(encoder, split.test.x, device=device)
    y_train, y_test = split.train.y, split.test.y
    n_classes = split.n_classes
    phase(f"k-NN probe (k = {cfg.knn_k})")
    knn = knn_probe(train_emb, y_train, test_emb, cfg.knn_k, n_classes)
    phase("linear probe")
    linear = linear_probe(train_emb, y_train, test_emb, cfg, seed)
    metrics: dict[str, float] = {}
    phase(f"metrics with their std over {n_folds} folds")
    for name, probs in (("knn", knn), ("linear", linear)):
        for key, value in classification_metrics(y_test, probs, split.class_names, n_folds, seed).items():
            metrics[f"test/{name}_{key}"] = value
    phase(f"clustering (k-means with {n_classes} clusters, silhouette)")
    for key, value in clustering_metrics(test_emb, y_test, n_classes, cfg, seed).items():
        metrics[f"test/{key}"] = value
    return ProbeResult(metrics, split.class_names, test_emb, knn, linear)
