"""Heads on the encoder outputs (docs/method.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """Shared by [CLS] and particle tokens: Linear(D, 8K), GELU, Linear(8K, K), then l2-normalise."""

    def __init__(self, d_model: int, d_proj: int, hidden_mult: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden_mult * d_proj), nn.GELU(),
                                 nn.Linear(hidden_mult * d_proj, d_proj))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1, eps=1e-8)


class ClassifierHead(nn.Module):
    """On the [CLS] output: Linear(D, 2D), GELU, Dropout, Linear(2D, D), GELU, Dropout, Linear(D, C); logits."""

    def __init__(self, d_model: int, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(d_model, n_classes),
        )

    @property
    def n_classes(self) -> int:
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        return last.out_features

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.net(cls)
