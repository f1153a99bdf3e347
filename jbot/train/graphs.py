"""The pre-training step as one CUDA graph (``runtime.cuda_graphs``).

A graph replays the kernels it recorded, on the tensors it recorded them with, so the step reads nothing from the
host: the batch is copied into one fixed input tensor, the learning rate and the teacher momentum of every step
sit in device tensors and are copied into the ones the optimizer and the EMA read, every shape is independent of
the data (``Distillation.static``), the optimizer is capturable and the views' generator is registered with the
graph. Without ``capture`` (the CPU) the same code runs eagerly: that is what the tests compare with the plain step.

``GraphStep`` knows the step only as a function, ``body(xb, lr, momentum, cache)`` (``jbot.train.pretrain``'s
``pretrain_step`` with its parts bound), and the generator that function draws from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch

from jbot.errors import JbotError

WARMUP_STEPS = 3  # eager steps before the capture (allocator, optimizer state, compilation)

# (batch, LR, teacher momentum, autocast's cache on) -> the step's detached terms; it sets the LR, clears the
# gradients and runs the whole step, reading the LR and the momentum where they lie (device tensors here)
StepBody = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


class GraphCaptureError(JbotError, RuntimeError):
    """runtime.cuda_graphs=on and the step could not be recorded."""


class GraphStep:
    def __init__(self, body: StepBody, lr: np.ndarray, momentum: np.ndarray, generator: torch.Generator,
                 device: torch.device, capture: bool, required: bool = False) -> None:
        """``lr`` and ``momentum``: the schedules, one value per global step; ``generator``: the one ``body``
        draws from (registered with the graph). ``required`` (runtime.cuda_graphs=on): a failed capture is an
        error; otherwise (auto) training goes on without the graph, saying so once."""
        self.body, self.generator, self.capture, self.required = body, generator, capture, required
        self.lr_schedule = torch.as_tensor(lr, dtype=torch.float32, device=device)
        self.momentum_schedule = torch.as_tensor(momentum, dtype=torch.float32, device=device)
        self.lr = self.lr_schedule[0].clone()  # read by the optimizer
        self.momentum = self.momentum_schedule[0].clone()  # read by the EMA update
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_terms: torch.Tensor | None = None

    def _run(self, xb: torch.Tensor) -> torch.Tensor:
        """The step body on the device-side LR and momentum (autocast's cache off under capture)."""
        return self.body(xb, self.lr, self.momentum, not self.capture)

    def __call__(self, xb: torch.Tensor, it: int) -> torch.Tensor:
        self.lr.copy_(self.lr_schedule[it])
        self.momentum.copy_(self.momentum_schedule[it])
        if not self.capture:
            return self._run(xb)
        if self.eager_steps < WARMUP_STEPS:  # on a side stream, as capture requires
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                terms = self._run(xb)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            return terms
        if self.graph is None:
            draws = self.generator.get_state()  # a capture advances the views' generator without drawing
            try:
                self._record(xb)
            except Exception as exc:  # noqa: BLE001 - whatever stopped the capture, the eager step still works
                self.generator.set_state(draws)  # the eager step draws what it would have drawn without the try
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
        """Capture one step. The body clears the gradients (set to None) before its backward, so backward
        allocates them in the graph's memory and every replay writes (not accumulates) them."""
        self.static_x = xb.clone()
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)  # the views' draws advance with every replay
        with torch.cuda.graph(graph):
            self.static_terms = self._run(self.static_x)
        self.graph = graph
