"""The pre-training step as one CUDA graph (``runtime.cuda_graphs``).

A graph replays the kernels it recorded, on the tensors it recorded them with, so the step reads nothing from the
host: the batch is copied into one fixed input tensor, the learning rate and the teacher momentum of every step
sit in device tensors and are copied into the ones the optimizer and the EMA read, every shape is independent of
the data (``Distillation.static``), the optimizer is capturable and the views' generator is registered with the
graph. Without ``capture`` (the CPU) the same code runs eagerly: that is what the tests compare with the plain step.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch

from jbot.errors import JbotError

if TYPE_CHECKING:
    from jbot.train.pretrain import Pretrainer

WARMUP_STEPS = 3  # eager steps before the capture (allocator, optimizer state, compilation)


class GraphCaptureError(JbotError, RuntimeError):
    """runtime.cuda_graphs=on and the step could not be recorded."""


class GraphStep:
    def __init__(self, trainer: Pretrainer, capture: bool, required: bool = False) -> None:
        """``required`` (runtime.cuda_graphs=on): a failed capture is an error; otherwise (auto) training goes on
        without the graph, saying so once."""
        self.trainer, self.capture, self.required = trainer, capture, required
        device = trainer.device
        self.lr_schedule = torch.as_tensor(trainer.lr, dtype=torch.float32, device=device)
        self.momentum_schedule = torch.as_tensor(trainer.momentum, dtype=torch.float32, device=device)
        self.lr = self.lr_schedule[0].clone()  # read by the optimizer
        self.momentum = self.momentum_schedule[0].clone()  # read by the EMA update
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_terms: torch.Tensor | None = None
        self._bound = False

    def _bind(self) -> None:
        """The optimizer reads its LR from ``self.lr`` from now on (after any restore of its state)."""
        for group in self.trainer.optimizer.param_groups:
            group["lr"] = self.lr
        self._bound = True

    def body(self, xb: torch.Tensor) -> torch.Tensor:
        """The trainer's step body, reading the momentum from the device (autocast's cache off under capture)."""
        return self.trainer.step_body(xb, self.momentum, cache=not self.capture)

    def __call__(self, xb: torch.Tensor, it: int) -> torch.Tensor:
        if not self._bound:
            self._bind()
        self.lr.copy_(self.lr_schedule[it])
        self.momentum.copy_(self.momentum_schedule[it])
        if not self.capture:
            self.trainer.optimizer.zero_grad(set_to_none=True)
            return self.body(xb)
        if self.eager_steps < WARMUP_STEPS:  # on a side stream, as capture requires
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.trainer.optimizer.zero_grad(set_to_none=True)
                terms = self.body(xb)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            return terms
        if self.graph is None:
            try:
                self._record(xb)
            except Exception as exc:  # noqa: BLE001 - whatever stopped the capture, the eager step still works
                if self.required:
                    raise GraphCaptureError(f"the pre-training step could not be recorded as a CUDA graph ({exc}); "
                                            "run with --set runtime.cuda_graphs=off") from exc
                sys.stderr.write(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training goes on "
                                 "without it (runtime.cuda_graphs=off silences this)\n")
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.capture = False
                return self(xb, it)
        assert self.graph is not None and self.static_x is not None and self.static_terms is not None
        self.static_x.copy_(xb)
        self.graph.replay()
        return self.static_terms.clone()

    def _record(self, xb: torch.Tensor) -> None:
        """Capture one step; its gradients live in the graph's memory, written (not accumulated) by every replay."""
        self.static_x = xb.clone()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.trainer.gen)  # the views' draws advance with every replay
        self.trainer.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self.static_terms = self.body(self.static_x)
        self.graph = graph
