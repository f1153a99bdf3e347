"""Frozen embeddings: the student [CLS] of un-augmented, unmasked jets (SPEC §7), batched, any device."""

from __future__ import annotations

import numpy as np
import torch

from jbot.model.encoder import JetEncoder


@torch.no_grad()
def embed(encoder: JetEncoder, x: np.ndarray | torch.Tensor, batch_size: int = 4096,
          device: torch.device | str | None = None, particles: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """-> ([CLS] (N, D), particle tokens (N, P, D) or None) as float32 numpy arrays."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    cls_out, part_out = [], []
    try:
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32).to(device, non_blocking=True)
            cls, part = encoder(xb)
            cls_out.append(cls.float().cpu())
            if particles:
                part_out.append(part.float().cpu())
    finally:
        encoder.train(was_training)
    d = encoder.cfg.d_model
    cls_np = torch.cat(cls_out).numpy() if cls_out else np.zeros((0, d), np.float32)
    part_np = torch.cat(part_out).numpy() if particles and part_out else None
    return cls_np, part_np
