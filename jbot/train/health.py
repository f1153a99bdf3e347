"""Representation health during pre-training (docs/method.md §5.7): two numbers per epoch on a fixed monitor batch
of training jets, and a detector that says when they show a collapse.

- ``health/cls_rank``: the effective rank of the student's [CLS] embeddings (RankMe, Garrido et al. 2023): the
  exponential of the entropy of the normalised singular values, between 1 (every jet on one line: collapsed) and
  the embedding width D.
- ``health/teacher_occupancy``: the share of the K projection dimensions that are the teacher's (centred) argmax
  for at least one monitor jet; 1/K when the teacher sends every jet to one prototype.

A run has collapsed when the rank stays below ``pretrain.collapse_rank``, or the teacher uses
``pretrain.collapse_dims`` dimensions or fewer (default 1: every jet to one prototype), for
``pretrain.collapse_patience`` epochs in a row. The teacher's entropy alone is no collapse sign: a sharp teacher
(low entropy) is what the method asks for, and it stays sharp whether it tells the jets apart or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jbot.config import PretrainConfig

RANK, OCCUPANCY = "health/cls_rank", "health/teacher_occupancy"


def effective_rank(x: torch.Tensor, eps: float = 1e-12) -> float:
    """RankMe of the rows of ``x`` (N, D): exp(-sum p log p), p the singular values over their sum."""
    s = torch.linalg.svdvals(x.double())
    if float(s.sum()) <= 0.0:
        return 1.0  # all zero: as collapsed as it gets
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def occupancy(logits: torch.Tensor, center: torch.Tensor) -> float:
    """The share of the K dimensions of ``logits`` (N, K) that are the argmax of ``logits - center`` for a row."""
    return float(torch.unique((logits - center).argmax(-1)).numel()) / logits.shape[-1]


class HealthMonitor:
    """The fixed monitor batch (``pretrain.health_jets`` training jets drawn with ``pretrain.seed``) and its
    measures of a student, teacher and centre."""

    def __init__(self, x: np.ndarray, cfg: PretrainConfig, device: torch.device) -> None:
        rng = np.random.default_rng(cfg.seed + 1)
        pick = np.sort(rng.permutation(len(x))[:cfg.health_jets])
        self.x = torch.as_tensor(np.asarray(x[pick]), dtype=torch.float32, device=device)

    @torch.no_grad()
    def measure(self, student: torch.nn.Module, teacher: torch.nn.Module, center: torch.Tensor) -> dict[str, float]:
        if len(self.x) == 0:
            return {}
        was = student.training
        student.eval()
        try:
            cls, _, _ = student(self.x, None, None)
            _, t_cls, _ = teacher(self.x, None, None)
        finally:
            student.train(was)
        return {RANK: effective_rank(cls.float()), OCCUPANCY: occupancy(t_cls.float(), center.float())}


@dataclass
class CollapseDetector:
    """Counts the epochs in a row whose health is below a floor; ``update`` says so once, when the count reaches
    ``patience`` (``collapsed`` stays true while it lasts)."""

    rank_floor: float
    dims_floor: int
    k: int  # the projection's dimensions
    patience: int
    streak: int = 0

    @classmethod
    def of(cls, cfg: PretrainConfig, k: int) -> CollapseDetector:
        return cls(cfg.collapse_rank, cfg.collapse_dims, k, cfg.collapse_patience)

    def low(self, metrics: Mapping[str, float]) -> list[str]:
        """What is below its floor in one epoch's ``metrics``, in words."""
        out = []
        rank, share = metrics.get(RANK), metrics.get(OCCUPANCY)
        if rank is not None and rank < self.rank_floor:
            out.append(f"[CLS] effective rank {rank:.2f} < pretrain.collapse_rank={self.rank_floor:g}")
        if share is not None and round(share * self.k) <= self.dims_floor:
            out.append(f"the teacher sends every monitor jet to {round(share * self.k)} of its {self.k} projection "
                       f"dimensions, <= pretrain.collapse_dims={self.dims_floor}")
        return out

    @property
    def collapsed(self) -> bool:
        return self.streak >= self.patience

    def update(self, metrics: Mapping[str, float], epoch: int) -> str | None:
        low = self.low(metrics)
        self.streak = self.streak + 1 if low else 0
        if self.streak != self.patience:
            return None
        return (f"the representation looks collapsed at epoch {epoch} ({'; '.join(low)}, for {self.patience} "
                "epochs in a row): this run is unlikely to learn useful jet features; check the temperatures, "
                "the centring (pretrain.center_momentum) and the learning rate")

    def replay(self, history: Mapping[str, Sequence[float]]) -> None:
        """Set the count from a resumed run's history (its per-epoch health)."""
        ranks, shares = history.get(RANK, []), history.get(OCCUPANCY, [])
        for i in range(max(len(ranks), len(shares))):
            epoch = {k: v[i] for k, v in ((RANK, ranks), (OCCUPANCY, shares)) if i < len(v)}
            self.streak = self.streak + 1 if self.low(epoch) else 0
