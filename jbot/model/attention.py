"""Multi-head self-attention with separate q/k/v/out projections and head dim k_d = floor(D / H) (docs/method.md §4).

jBOT-B has D = 64 and H = 6, so H * k_d = 60 != D: ``torch.nn.MultiheadAttention`` cannot express it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        inner = self.n_heads * self.head_dim
        self.query = nn.Linear(d_model, inner)
        self.key = nn.Linear(d_model, inner)
        self.value = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)
        self.dropout = dropout

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, _ = t.shape
        return t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, T, H*kd) -> (B, H, T, kd)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, D); ``key_valid`` (B, T) True where a token may be attended to (None: all)."""
        B, T, _ = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]  # (B, 1, 1, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, H, T, kd) -> (B, T, H*kd)
        return self.out(y)
