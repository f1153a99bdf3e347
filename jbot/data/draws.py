"""Random numbers for one rank's rows of a batch, drawn as if for the whole batch.

Data-parallel training splits a global batch of ``total`` jets into equal row blocks, one per process. Every
process keeps the same generator state and draws the random numbers of the *whole* batch, then keeps the rows of
its block (``rows``, indices into the whole batch): rank r's jets get exactly the rotations, smearing, splits and
masks they would get in one process with the global batch, so one process and N processes train the same model.
Drawing the other ranks' numbers too costs a few (total, P) random tensors per step, nothing beside the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Draws:
    gen: torch.Generator
    rows: torch.Tensor | None = None  # (B,) this block's rows of the whole batch; None: the block is the batch
    total: int = 0  # rows of the whole batch

    def _full(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape if self.rows is None else (self.total, *shape[1:])

    def _keep(self, full: torch.Tensor) -> torch.Tensor:
        return full if self.rows is None else full[self.rows.to(full.device)]

    def rand(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """U[0, 1) of ``shape`` (B, ...): this block's rows of the whole batch's draw."""
        return self._keep(torch.rand(self._full(shape), generator=self.gen, device=device))

    def randn(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return self._keep(torch.randn(self._full(shape), generator=self.gen, device=device))


def as_draws(gen: torch.Generator | Draws) -> Draws:
    return gen if isinstance(gen, Draws) else Draws(gen)
