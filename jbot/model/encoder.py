"""The jBOT particle transformer (docs/method.md §4): token embedding, [CLS], post-LN blocks, no positional encoding.

Registered as ``model.arch`` "transformer" (``jbot.model.registry``), the default; build it with
``jbot.model.registry.build_encoder``.
"""

from __future__ import annotations

import torch
from torch import nn

from jbot.config import ModelConfig
from jbot.data.classes import VALID
from jbot.model.attention import SelfAttention


class Block(nn.Module):
    """Post-LayerNorm block: x = LN(x + Drop(MHA(x))); x = LN(x + Drop(FFN(x))), exact (erf) GELU."""

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        d = cfg.d_model
        self.attn = SelfAttention(d, cfg.n_heads)
        self.ln1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.ln2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attn(x, key_valid)))
        return self.ln2(x + self.drop(self.ffn(x)))


class JetEncoder(nn.Module):
    """Particles (B, P, F) -> ([CLS] output (B, D), particle tokens (B, P, D)).

    Permutation invariant over particles; with ``mask_padding`` padded slots are invisible to attention, so the
    output also does not change when padded slots are appended. ``masked`` (B, P) replaces those particles'
    embeddings with the learnable [MASK] vector (student views in pre-training).
    """

    feature_scale: torch.Tensor

    def __init__(self, cfg: ModelConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        scale = (*cfg.feature_scale, *(1.0,) * (cfg.n_features - len(cfg.feature_scale)))  # declared extras: 1
        self.register_buffer("feature_scale", torch.tensor(scale), persistent=False)
        self.embed = nn.Linear(cfg.n_features, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, dropout) for _ in range(cfg.n_layers))

    def set_dropout(self, p: float) -> None:
        for block in self.blocks:
            assert isinstance(block, Block)
            block.drop.p = p

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, P, _ = x.shape
        tokens = self.embed(x * self.feature_scale)  # (B, P, F) -> (B, P, D)
        if masked is not None:
            tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.expand(B, 1, -1)
        h = torch.cat([cls, tokens], dim=1)  # (B, T, D), T = P + 1
        key_valid = None
        if self.cfg.mask_padding:
            valid = x[..., VALID] > 0.5  # (B, P)
            key_valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), valid], dim=1)  # (B, T)
        for block in self.blocks:
            h = block(h, key_valid)
        return h[:, 0], h[:, 1:]

    def backbone_parameters(self) -> int:
        """Parameters of the published backbone (embedding, [CLS], blocks): docs/method.md §4's table."""
        return sum(p.numel() for n, p in self.named_parameters() if n != "mask_token")
