"""Where pre-training batches come from: the whole training set on the device (the default, JetNet-sized), or
files streamed through a bounded host buffer (JetClass-sized).

Both give each epoch's order as a pure function of (seed, epoch), so a run resumes mid-epoch by skipping the
steps it has done, and both hand each rank of a data-parallel run its block of every global batch.

Streaming (``StreamSource``): each epoch cuts every shard into K = ceil(N / window) contiguous chunks (after a
random per-epoch rotation of the shard, K > 1 only); window k holds chunk k of *every* shard, so each window
mixes all files (and classes) and is read as one contiguous range per file. A rank reads only its own sub-range
of each chunk, permutes its rows of the window, and yields batches of B / world rows, carrying the remainder into
the next window. Host memory holds about two windows (the one being trained on and the next, read by a
background thread, one more in the queue between them; on CUDA one more, whose asynchronous copies to the GPU may
still be waiting) in buffers allocated once, whatever the dataset's size.
With one window and one process the order is exactly the in-memory path's.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from jbot.data.features import PAPER_FEATURES, n_columns
from jbot.data.shards import Shard, class_names, find_shards, read_rows, shards_fingerprint
from jbot.data.splits import Part, Split
from jbot.errors import JbotError


class BatchSource(Protocol):
    @property
    def n_jets(self) -> int: ...


    def steps(self, batch: int, world: int) -> int: ...

    def batches(self, epoch: int, start: int, batch: int, rank: int, world: int) -> Iterator[torch.Tensor]: ...


def order_generator(seed: int, epoch: int, window: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one (epoch, window, rank)'s order: random access, so resuming needs no replay."""
    state = np.random.SeedSequence([seed, epoch, window, rank, 0x5EED]).generate_state(2, np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return gen


def _local_block(batch: int, rank: int, world: int) -> tuple[int, int]:
    if batch % world:
        raise JbotError(f"pretrain.batch_size ({batch}) must be divisible by the number of processes ({world})")
    b = batch // world
    return rank * b, b


class MemorySource:
    """The training jets as one (N, P, F) tensor on the device, permuted per epoch."""

    def __init__(self, x: np.ndarray | torch.Tensor, seed: int, device: torch.device) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32, device=device)  # (N, P, F)
        self.n_jets, self.seed, self.device = int(self.x.shape[0]), seed, device

    def steps(self, batch: int, world: int) -> int:
        return max(1, self.n_jets // batch)

    def batches(self, epoch: int, start: int, batch: int, rank: int, world: int) -> Iterator[torch.Tensor]:
        first, b = _local_block(batch, rank, world)
        # drawn on the CPU on every device (a CUDA generator draws another permutation): the same order everywhere,
        # and the streamed path's with one window
        cpu = torch.device("cpu")
        perm = torch.randperm(self.n_jets, generator=order_generator(self.seed, epoch, 0, 0, cpu)).to(self.device)
        for i in range(start, self.steps(batch, world)):
            yield self.x[perm[i * batch + first:i * batch + first + b]]


class StreamSource:
    """Shards read window by window (see the module docstring); ``window`` = rows per window over all ranks."""

    def __init__(self, shards: list[Shard], window: int, seed: int, device: torch.device,
                 n_particles: int = 30, features: tuple[str, ...] = PAPER_FEATURES) -> None:
        self.shards, self.seed, self.device, self.n_particles = shards, seed, device, n_particles
        self.features, self.width = features, n_columns(features)  # the declared features, columns per particle
        self.n_jets = sum(s.n for s in shards)
        self.fingerprint = shards_fingerprint(shards)
        self.n_windows = max(1, math.ceil(self.n_jets / window))

    # ------------------------------------------------------------------ layout (metadata only)
    def _chunk(self, n: int, k: int, rank: int, world: int) -> tuple[int, int]:
        """Rotated-coordinate rows of shard length ``n``, window ``k``, rank's sub-range."""
        c0, c1 = n * k // self.n_windows, n * (k + 1) // self.n_windows
        length = c1 - c0
        return c0 + length * rank // world, c0 + length * (rank + 1) // world

    def window_sizes(self, rank: int, world: int) -> list[int]:
        return [sum(b - a for a, b in (self._chunk(s.n, k, rank, world) for s in self.shards))
                for k in range(self.n_windows)]

    def steps(self, batch: int, world: int) -> int:
        _, b = _local_block(batch, 0, world)
        return max(1, min(sum(self.window_sizes(r, world)) for r in range(world)) // b)

    def _ranges(self, epoch: int, k: int, rank: int, world: int) -> list[tuple[Shard, int, int]]:
        rng = np.random.default_rng([self.seed, epoch, 0xC0FFEE])
        offsets = [int(rng.integers(s.n)) if self.n_windows > 1 else 0 for s in self.shards]
        out = []
        for shard, offset in zip(self.shards, offsets, strict=True):
            a, b = self._chunk(shard.n, k, rank, world)
            a, b = a + offset, b + offset  # rotated rows -> file rows, wrapping at the end
            if a >= shard.n:
                a, b = a - shard.n, b - shard.n
            out += [(shard, a, min(b, shard.n))] + ([(shard, 0, b - shard.n)] if b > shard.n else [])
        return [r for r in out if r[2] > r[1]]

    def read_window(self, epoch: int, k: int, rank: int, world: int, raw: np.ndarray | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's rows of window k, in their permuted order (N_k, P, F), on the host; read through ``raw``
        and written into ``out`` when given (buffers of at least N_k rows, reused window after window)."""
        ranges = self._ranges(epoch, k, rank, world)
        n = sum(b - a for _, a, b in ranges)
        raw = np.empty((n, self.n_particles, self.width), np.float32) if raw is None else raw
        filled = 0
        for shard, a, b in ranges:
            read_rows(shard, a, b, self.n_particles, out=raw[filled:], features=self.features)
            filled += b - a
        perm = torch.randperm(n, generator=order_generator(self.seed, epoch, k, rank, torch.device("cpu")))
        if out is None:
            return torch.from_numpy(raw[:n])[perm]
        torch.index_select(torch.from_numpy(raw[:n]), 0, perm, out=out[:n])
        return out[:n]

    # ------------------------------------------------------------------ iteration
    def batches(self, epoch: int, start: int, batch: int, rank: int, world: int) -> Iterator[torch.Tensor]:
        _, b = _local_block(batch, rank, world)
        todo = self.steps(batch, world) - start
        skip = start * b
        sizes = self.window_sizes(rank, world)
        k0 = 0
        for size in sizes:
            if skip < size:
                break
            skip, k0 = skip - size, k0 + 1
        cap = max(sizes)
        raw = np.empty((cap, self.n_particles, self.width), np.float32)  # the reader's, refilled for every window
        # the slots of the windows: the one being trained on, the one waiting in the queue, the one being read; on
        # CUDA page-locked (batches are copied to the GPU asynchronously, the step does not wait for them) and one
        # more: a queued copy reads its slot when the GPU reaches it, which can be many steps after it was queued, so
        # the slot of window k is refilled only once the copies out of it have run (an event recorded behind them,
        # waited for here, one window later, before the reader is let on to refill it)
        pinned = self.device.type == "cuda"
        n_slots = max(1, min(4 if pinned else 3, self.n_windows - k0))  # no more than the windows left to read
        slots = [torch.empty(cap, self.n_particles, self.width, pin_memory=pinned) for _ in range(n_slots)]
        queued: list[torch.cuda.Event] = []  # behind the copies of the last two windows (CUDA)

        def read(k: int) -> torch.Tensor:
            return self.read_window(epoch, k, rank, world, raw, slots[k % len(slots)])

        windows = _Prefetch(read, range(k0, self.n_windows))
        try:
            carry = torch.empty(0, self.n_particles, self.width)
            for i, x in enumerate(windows):
                try:
                    x = x[skip:] if i == 0 else x
                    if len(carry):  # the batch that straddles two windows (a small copy)
                        head = torch.cat([carry, x[:b - len(carry)]])
                        x = x[b - len(carry):]
                        if len(head) < b:
                            carry = head
                            continue
                        # page-locked too on CUDA: queued like the others (the allocator keeps it until copied)
                        yield (head.pin_memory() if pinned else head).to(self.device, non_blocking=pinned)
                        todo -= 1
                        if todo == 0:
                            return
                    n_full = min(len(x) // b, todo)
                    for j in range(n_full):
                        # a batch of its own memory (the slot is refilled windows later)
                        yield x[j * b:(j + 1) * b].to(self.device, non_blocking=pinned, copy=True)
                    todo -= n_full
                    if todo == 0:
                        return
                    carry = x[n_full * b:].clone()
                finally:  # before the next window is taken: the reader then refills the slot of the one before this
                    if pinned:
                        queued.append(torch.cuda.Event())
                        queued[-1].record()
                        if len(queued) > 1:
                            queued.pop(0).synchronize()
        finally:
            windows.close()


class _Prefetch:
    """Reads the next window in a background thread while the current one trains (at most one waiting)."""

    def __init__(self, read, keys: range) -> None:  # type: ignore[no-untyped-def]
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(read, keys), daemon=True)
        self._thread.start()

    def _run(self, read, keys: range) -> None:  # type: ignore[no-untyped-def]
        for k in keys:
            try:
                item = read(k)
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item, BaseException):
                return
        self._queue.put(None)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()


def open_stream(folder: str, window: int, seed: int, device: torch.device, n_particles: int,
                features: tuple[str, ...] = PAPER_FEATURES) -> StreamSource:
    return StreamSource(find_shards(folder, features), window, seed, device, n_particles, features)


def monitor_split(source: StreamSource, val_dir: str | None, n_reference: int, n_val: int, seed: int) -> Split:
    """The split a streamed run carries: the training files' fingerprint, and for the k-NN monitor a small labelled
    in-memory sample of ``val_dir`` (rows spread over its files, each file one class), half as reference, half
    as queries. The sample is empty (no monitor) without ``val_dir`` or when a file's class is unknown."""
    n_particles = source.n_particles
    shards = find_shards(val_dir, source.features) if val_dir is not None else []
    names = class_names(shards)
    xs, jets = [np.zeros((0, n_particles, source.width), np.float32)], [np.zeros((0, 4), np.float32)]
    ys = [np.zeros(0, np.int64)]
    if shards and len(names) >= 2 and all(s.label is not None for s in shards):
        rng = np.random.default_rng(seed)
        per = math.ceil((n_reference + n_val) / len(shards))
        for s in shards:
            m = min(per, s.n)
            a = int(rng.integers(s.n - m + 1))
            x, j = read_rows(s, a, a + m, n_particles, features=source.features)
            xs.append(x)
            jets.append(j)
            ys.append(np.full(m, names.index(s.label or ""), dtype=np.int64))
    order = np.random.default_rng(seed).permutation(sum(len(y) for y in ys))
    x, jet, y = np.concatenate(xs)[order], np.concatenate(jets)[order], np.concatenate(ys)[order]
    n_ref = len(y) * n_reference // (n_reference + n_val)
    ref, val = Part(x[:n_ref], jet[:n_ref], y[:n_ref], y[:n_ref]), Part(x[n_ref:], jet[n_ref:], y[n_ref:], y[n_ref:])
    return Split("stream", ref, val, ref.subset(np.arange(0)), names if len(y) else (), seed, source.fingerprint,
                 features=source.features)
