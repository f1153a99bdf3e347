"""Batched inference, the one loop every command uses: the [CLS] of un-augmented, unmasked jets (the frozen
embedding of the probes and anomaly scores), optionally the particle tokens and a classifier's probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from jbot.data.features import PAPER_FEATURES
from jbot.io import atomic_write
from jbot.model.encoder import JetEncoder

if TYPE_CHECKING:
    from jbot.train.checkpoint import LoadedModel


@dataclass(frozen=True)
class Outputs:
    """float32 arrays: ``cls`` (N, D); ``particles`` (N, P, D) when asked for; ``probs`` (N, C) with a head."""

    cls: np.ndarray
    particles: np.ndarray | None = None
    probs: np.ndarray | None = None


def infer(encoder: JetEncoder, x: np.ndarray | torch.Tensor, *, head: torch.nn.Module | None = None,
          particles: bool = False, batch_size: int = 4096, device: torch.device | str | None = None,
          on_batch: Callable[[int], None] | None = None) -> Outputs:
    """The encoder (and ``head``: logits from [CLS], softmaxed) on ``x`` (N, P, F) in batches, in eval mode, no
    gradients; the modules go to ``device`` (default: where the encoder is) and come back to their mode."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    modules = [m for m in (encoder, head) if m is not None]
    modes = [m.training for m in modules]
    cls_out, part_out, prob_out = [], [], []
    try:
        for m in modules:
            m.to(device).eval()
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32).to(device, non_blocking=True)
                cls, part = encoder(xb)
                cls_out.append(cls.float().cpu())
                if particles:
                    part_out.append(part.float().cpu())
                if head is not None:
                    prob_out.append(torch.softmax(head(cls).float(), dim=-1).cpu())
                if on_batch is not None:
                    on_batch(len(xb))
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)
    d = encoder.cfg.d_model
    return Outputs(torch.cat(cls_out).numpy() if cls_out else np.zeros((0, d), np.float32),
                   torch.cat(part_out).numpy() if particles and part_out else None,
                   torch.cat(prob_out).numpy() if prob_out else None)


def embed(encoder: JetEncoder, x: np.ndarray | torch.Tensor, batch_size: int = 4096,
          device: torch.device | str | None = None, particles: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """-> ([CLS] (N, D), particle tokens (N, P, D) or None): ``infer`` without a head."""
    out = infer(encoder, x, particles=particles, batch_size=batch_size, device=device)
    return out.cls, out.particles


def schema_mismatch(where: str | Path, x: np.ndarray, features: tuple[str, ...]) -> str | None:
    """The one line saying jets ``x`` do not have the columns of ``features`` (the model's schema), or None."""
    from jbot.data.features import layout

    names = layout(features)
    if x.ndim == 3 and x.shape[2] != len(names):
        return (f"{where}: the jets have {x.shape[2]} columns per particle, the model takes {len(names)} "
                f"({', '.join(names)})")
    return None


def read_inputs(path: str | Path, n_particles: int = 30, features: tuple[str, ...] = PAPER_FEATURES) -> np.ndarray:
    """Particles (N, P, F), P = ``n_particles`` and F the columns of ``features`` (the model's ``model.n_particles``
    and ``model.features``), validated: from any file ``jbot.data.readers`` reads (JetNet-layout HDF5 of any
    particle count, JetClass ROOT or parquet) or from an ``.npz`` whose ``x`` has exactly those slots and columns."""
    from jbot.data.features import n_columns
    from jbot.data.jetnet import DataError, validate_particles
    from jbot.data.readers import read_jets

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
        if (mismatch := schema_mismatch(f"{path}: array 'x'", x, features)) is not None:
            raise DataError(mismatch)
        validate_particles(path, x, n_particles, key="x", n_columns=n_columns(features))
        return x
    return read_jets(path, n_particles, features).particles


def embed_to_file(model: LoadedModel, inputs: str | Path, out: str | Path, batch_size: int = 4096,
                  device: torch.device | str = "cpu",
                  on_batch: Callable[[int], None] | None = None) -> dict[str, tuple[int, ...]]:
    """Write ``cls`` (N, D), ``particles`` (N, P, D) and, with a classifier, ``probs`` (N, C) to an .npz."""
    x = read_inputs(inputs, model.encoder.cfg.n_particles, model.encoder.cfg.features)
    result = infer(model.encoder, x, head=model.classifier, particles=True, batch_size=batch_size, device=device,
                   on_batch=on_batch)
    assert result.particles is not None
    arrays = {"cls": result.cls, "particles": result.particles}
    if result.probs is not None:
        arrays["probs"] = result.probs
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    atomic_write(out, write)
    return {k: v.shape for k, v in arrays.items()}
