"""The pre-training step as one CUDA graph (``runtime.cuda_graphs``).

A graph replays the kernels it recorded, on the tensors it recorded them with, so the step reads nothing from the
host: the batch is copied into one fixed input tensor, the learning rate and the teacher momentum of every step
sit in device tensors and are copied into the ones the optimizer and the EMA read, every shape is independent of
the data (``Distillation.static``), the optimizer is capturable and the views' generator is registered with the
graph. Without ``capture`` (the CPU) the same code runs eagerly: that is what the tests compare with the plain step.

``GraphStep`` knows the step only as a function, ``body(xb, lr, momentum, cache)`` (``jbot.train.pretrain``'s
``pretrain_step`` with its parts bound), and the generator that function draws from.

A step that waits for the host (a ``.item()``, a shape read from the data) cannot be recorded. The last warm-up step
runs under torch's sync debug mode: a wait found there means no capture is tried (a failed capture leaves CUDA's
generators and the current stream in its own state; ``_recover`` puts back what it can, for failures of other
kinds).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

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
        self.pool: tuple[int, int] | None = None  # the graph's private memory pool

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
            with torch.cuda.stream(side), host_waits(self.eager_steps == WARMUP_STEPS - 1) as waits:
                terms = self._run(xb)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_steps += 1
            if waits:  # the step ran; the ones after it run eagerly
                self._without_graph(f"the step waits for the host at {waits[0]}")
            return terms
        if self.graph is None:
            stream = torch.cuda.current_stream() if torch.cuda.is_available() else None
            draws = self.generator.get_state()  # a capture advances the views' generator without drawing
            try:
                self._record(xb)
            except Exception as exc:  # noqa: BLE001 - whatever stopped the capture, the eager step still works
                trouble = _recover(stream, self.generator, draws, self.pool)
                self._without_graph(f"{type(exc).__name__}: {exc}{trouble}", exc)
                return self(xb, it)
        assert self.graph is not None and self.static_x is not None and self.static_terms is not None
        self.static_x.copy_(xb)
        self.graph.replay()
        return self.static_terms.clone()

    def _without_graph(self, why: str, exc: Exception | None = None) -> None:
        """Training goes on eagerly, saying why once; with ``required`` (runtime.cuda_graphs=on) an error."""
        if self.required:
            raise GraphCaptureError(f"the pre-training step could not be recorded as a CUDA graph ({why}); "
                                    "run with --set runtime.cuda_graphs=off") from exc
        sys.stderr.write(f"CUDA graph capture failed ({why}); training goes on without it "
                         "(runtime.cuda_graphs=off silences this)\n")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.capture = False

    def _record(self, xb: torch.Tensor) -> None:
        """Capture one step. The body clears the gradients (set to None) before its backward, so backward
        allocates them in the graph's memory and every replay writes (not accumulates) them."""
        self.static_x = xb.clone()
        graph = torch.cuda.CUDAGraph()
        self.pool = torch.cuda.graph_pool_handle()  # named, so that a failed capture can stop allocating from it
        graph.register_generator_state(self.generator)  # the views' draws advance with every replay
        with torch.cuda.graph(graph, pool=self.pool):
            self.static_terms = self._run(self.static_x)
        self.graph = graph


@contextlib.contextmanager
def host_waits(watch: bool) -> Iterator[list[str]]:
    """Where the work inside waits for the device (torch's sync debug mode, warning only: the work runs as
    usual), as ``file:line`` of the Python line; an empty list when ``watch`` is off or there is no CUDA."""
    found: list[str] = []
    if not (watch and torch.cuda.is_available()):
        yield found
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        if "synchronizing CUDA operation" in str(w.message):
            found.append(f"{w.filename}:{w.lineno}")
        else:  # anyone else's warning, passed on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _recover(stream: torch.cuda.Stream | None, generator: torch.Generator, draws: torch.Tensor,
             pool: tuple[int, int] | None) -> str:
    """After a failed capture, what its exit did not get to put back: the stream current before it, the
    generators it marked as capturing (the views' one at its state before; CUDA's default ones as they are), each
    given a fresh state, and the allocator's routing of new memory into the capture's pool (the pool itself stays
    reserved: releasing it by hand would free it twice on a torch that does so itself). Returns what could not be
    put back, as text for the message."""
    try:
        if stream is None or generator.device.type != "cuda":  # no capture began (no CUDA)
            generator.set_state(draws)
            return ""
        torch.cuda.set_stream(stream)
        for gen in (generator, *torch.cuda.default_generators):
            fresh = torch.Generator(device=gen.device)
            fresh.set_state(draws if gen is generator else gen.get_state())
            gen.graphsafe_set_state(fresh.graphsafe_get_state())
    except Exception as exc:  # noqa: BLE001 - said in the message; eager training may still work
        return f"; CUDA's state after it could not be restored: {type(exc).__name__}: {exc}"
    if pool is not None:
        try:
            torch._C._cuda_endAllocateToPool(stream.device_index, pool)
        except RuntimeError:  # the capture's end got to it first
            pass
    return "; the failed capture's memory may stay reserved"
