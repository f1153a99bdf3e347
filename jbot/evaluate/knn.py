"""Exact k nearest neighbours by chunked matrix products + top-k (never the full query x reference matrix)."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def knn_search(query: torch.Tensor, reference: torch.Tensor, k: int, chunk_size: int = 4096
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (N, k) ascending and reference indices (N, k). Memory ~ chunk_size x M floats."""
    k = min(k, reference.shape[0])
    ref_sq = (reference * reference).sum(1)  # (M,)
    dists, idxs = [], []
    for start in range(0, query.shape[0], chunk_size):
        q = query[start:start + chunk_size]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * (q @ reference.T) + ref_sq[None, :]  # (n, M)
        d2, i = torch.topk(d2, k, dim=1, largest=False)
        dists.append(d2.clamp_min(0).sqrt())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def knn_classify(ref_emb: np.ndarray, ref_labels: np.ndarray, query_emb: np.ndarray, k: int = 30,
                 chunk_size: int = 4096) -> np.ndarray:
    """Uniform-vote k-NN prediction (ties go to the lowest class index, as scikit-learn)."""
    ref = torch.as_tensor(ref_emb, dtype=torch.float32)
    _, idx = knn_search(torch.as_tensor(query_emb, dtype=torch.float32), ref, k, chunk_size)
    labels = torch.as_tensor(ref_labels, dtype=torch.long)
    n_classes = int(labels.max()) + 1
    votes = torch.nn.functional.one_hot(labels[idx], n_classes).sum(1)  # (N, k) -> (N, C)
    return votes.argmax(1).numpy()
