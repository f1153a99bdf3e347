"""The collectives of data-parallel pre-training (``torchrun``, PyTorch DDP): which process this is, and what the
losses need to equal one process's on the global batch. Nothing but torch: the layers above (``jbot.ssl``,
``jbot.train``) import it; joining and leaving the process group is ``jbot.train.distributed``'s.

One process gets ``SINGLE``, whose collectives are identities, so the single-process path runs exactly as it
would without any of this. Under ``torchrun --nproc-per-node N`` every rank holds the same weights, optimiser and
generator state and trains on its own B/N rows of each global batch of B jets:

- gradients are averaged by DDP, so every loss that is a mean over the batch needs nothing more;
- a mean over a data-dependent count (masked tokens, valid particles) divides by the *global* count shared
  out over the ranks (``share``), so the averaged gradient is the global mean's;
- KoLeo's nearest neighbours are searched among all ranks' [CLS] vectors (``gather``, differentiable);
- the teacher centres are updated from global means (``sum``), identical on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Comm:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (a new tensor, no gradient)."""
        t = t.detach().clone()
        if self.active:
            dist.all_reduce(t)
        return t

    def minimum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t

    def share(self, count: torch.Tensor) -> torch.Tensor:
        """The global count divided by the number of ranks: divide a local sum by it and DDP's gradient average
        gives the gradient of (global sum) / (global count)."""
        return self.sum(count) / self.world if self.active else count

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' rows in rank order (R*B, ...), differentiable back into this rank's rows."""
        return _Gather.apply(t) if self.active else t


SINGLE = Comm()


class _Gather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient of the gathered tensor and keeps this rank's rows
    (backend-agnostic: gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        ctx.rows = (dist.get_rank() * t.shape[0], t.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start:start + n]
