"""Frozen embeddings: the student [CLS] of un-augmented, unmasked jets (SPEC §7), batched, any device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from jbot.io import atomic_write
from jbot.model.encoder import JetEncoder

if TYPE_CHECKING:
    from jbot.train.checkpoint import LoadedModel


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


def read_inputs(path: str | Path, n_particles: int = 30) -> np.ndarray:
    """Particles (N, P, F) from a JetNet-layout HDF5 file or an ``.npz`` holding ``x``, validated."""
    from jbot.data.jetnet import DataError, read_jetnet, validate_particles

    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            with np.load(path) as z:
                if "x" not in z.files:
                    raise DataError(f"{path}: no array 'x' (the file holds {', '.join(z.files) or 'nothing'})")
                raw = z["x"]
                if not np.issubdtype(raw.dtype, np.floating):
                    raise DataError(f"{path}: array 'x' has dtype {raw.dtype}, expected floating point (float32)")
                x = np.asarray(raw, dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
        validate_particles(path, x, n_particles, key="x")
        return x
    return read_jetnet(path, n_particles).particles


def embed_to_file(model: LoadedModel, inputs: str | Path, out: str | Path, batch_size: int = 4096,
                  device: torch.device | str = "cpu",
                  on_batch: Callable[[int], None] | None = None) -> dict[str, tuple[int, ...]]:
    """Write ``cls`` (N, D), ``particles`` (N, P, D) and, with a classifier, ``probs`` (N, C) to an .npz."""
    x = read_inputs(inputs, model.encoder.cfg.n_particles)
    encoder = model.encoder.to(device).eval()
    head = model.classifier.to(device).eval() if model.classifier is not None else None
    cls_out, part_out, prob_out = [], [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], device=device)
            cls, part = encoder(xb)
            cls_out.append(cls.float().cpu().numpy())
            part_out.append(part.float().cpu().numpy())
            if head is not None:
                prob_out.append(torch.softmax(head(cls).float(), dim=-1).cpu().numpy())
            if on_batch is not None:
                on_batch(len(xb))
    arrays = {"cls": np.concatenate(cls_out), "particles": np.concatenate(part_out)}
    if prob_out:
        arrays["probs"] = np.concatenate(prob_out)
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_write(out, write)
    return {k: v.shape for k, v in arrays.items()}
