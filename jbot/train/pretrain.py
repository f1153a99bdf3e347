"""jBOT pre-training (docs/method.md §6): AdamW, warm-up then constant (or cosine) LR, EMA teacher, per-epoch monitors.

One step is one function, ``pretrain_step``: schedules -> views -> teacher and student -> losses -> backward ->
clipping -> AdamW -> EMA teacher -> centres. ``make_step`` wraps it for the runtime (torch.compile of its
networks, one CUDA graph of the whole step: ``jbot.train.graphs``); ``Pretrainer`` owns the state it reads and
the epochs, checkpoints, monitors and stop signals around it.

Batches come from a ``BatchSource``: by default the training set on the device as one tensor, shuffled by index
every epoch, or files streamed through a bounded buffer (``data.stream``). Nothing leaves the device inside an
epoch: loss terms and the first non-finite step are accumulated there and read once per epoch. Under ``torchrun``
each process trains on its block of every global batch (``jbot.comm``); rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import functools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from jbot import signals
from jbot.comm import SINGLE, Comm
from jbot.config import JbotConfig
from jbot.data.features import columns
from jbot.data.splits import Split
from jbot.data.stream import BatchSource, MemorySource
from jbot.errors import JbotError
from jbot.evaluate.embed import embed
from jbot.evaluate.knn import knn_classify
from jbot.redaction import public
from jbot.ssl.center import Centers
from jbot.ssl.method import LOSS_TERMS, TERMS, Distillation, Forward, JBOTNetwork, StudentOutputs, TeacherOutputs
from jbot.ssl.schedules import lr_schedule, momentum_schedule
from jbot.ssl.teacher import ema_update, make_teacher
from jbot.train.checkpoint import load_checkpoint, save_checkpoint
from jbot.train.device import autocast, runtime_device, use_compile, use_cuda_graphs
from jbot.train.graphs import GraphStep
from jbot.train.health import CollapseDetector, HealthMonitor
from jbot.train.tracker import NullTracker, Tracker

KNN_REFERENCE = 20_000
STOP_POLL = 16  # under torchrun, steps between the ranks' checks for a stop signal (one small collective each)


def _warn(text: str) -> None:
    import sys

    print(f"warning: {text}", file=sys.stderr, flush=True)


class TrainingDiverged(JbotError, RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@dataclass
class PretrainResult:
    checkpoint: Path
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    knn_acc: float | None = None
    seconds: float = 0.0
    steps: dict[str, list[int]] = field(default_factory=dict)  # the epochs each history series was measured at


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    metrics: dict[str, float]
    collapsed: bool = False  # the collapse detector's verdict (``train.health``) as of this epoch


def build_networks(cfg: JbotConfig) -> tuple[JBOTNetwork, JBOTNetwork]:
    """Student with seeded initial weights, teacher as its frozen copy (same initial weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.pretrain.seed)
        student = JBOTNetwork(cfg.model, cfg.pretrain.dropout)
    return student, make_teacher(student)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, LayerNorm gains and the [CLS] / [MASK] tokens (DINO convention)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "mask_token")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class StepParts:
    """Everything one pre-training step reads and updates, handed to ``pretrain_step`` whole.

    ``student_forward`` and ``teacher_forward`` are the networks as the step calls them (the networks themselves,
    DDP's wrapper of the student, compiled ones) and ``losses`` is ``method.losses`` or its compiled graph;
    ``student`` and ``teacher`` are the plain modules whose weights the optimizer, the clipping and the EMA touch.
    """

    method: Distillation
    student: JBOTNetwork
    teacher: JBOTNetwork
    centers: Centers
    optimizer: torch.optim.Optimizer
    gen: torch.Generator  # the views' draws
    comm: Comm
    device: torch.device
    precision: str  # runtime.precision (autocast)
    grad_clip: float | None
    student_forward: Forward
    teacher_forward: Forward
    losses: Callable[[TeacherOutputs, StudentOutputs], torch.Tensor]


def pretrain_step(p: StepParts, xb: torch.Tensor, lr: float | torch.Tensor, momentum: float | torch.Tensor,
                  cache: bool = True) -> torch.Tensor:
    """One pre-training step (docs/method.md §5.5, §6) on a batch ``xb`` (B, P, F) already on the device -> the
    detached ``TERMS`` (no host sync).

    ``lr`` and ``momentum`` are the schedules' values at this step: numbers, or the device tensors a CUDA graph
    reads (``GraphStep`` copies every step's values into them before it runs or replays this); ``cache=False``
    there (autocast's cached casts would be the graph's stale copies).
    """
    # schedules: this step's LR; its teacher momentum is the EMA's below (the temperatures are constant)
    for group in p.optimizer.param_groups:
        group["lr"] = lr
    p.optimizer.zero_grad(set_to_none=True)
    # views: two augmentations of every jet (2B, P, F), the particles the student sees as [MASK] (2B, P)
    views, masked = p.method.views(xb, p.gen)
    # forwards and losses: the teacher on the full views (no gradient), the student on the masked ones
    with autocast(p.device, p.precision, cache):
        teacher = p.method.teacher_outputs(p.teacher_forward, views)
        student = p.method.student_outputs(p.student_forward, views, masked)
        terms = p.losses(teacher, student)
    terms[0].backward()  # under torchrun DDP averages the gradients over the ranks here
    if p.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(p.student.parameters(), p.grad_clip)
    p.optimizer.step()
    ema_update(p.teacher, p.student, momentum)
    # centres, last: from this step's teacher outputs (its losses used the centres from before)
    p.centers.update(teacher.cls, teacher.part, teacher.part_valid, p.comm)
    return torch.cat([terms.detach(), p.method.monitors(teacher, student)])


class Step(Protocol):
    def __call__(self, xb: torch.Tensor, it: int) -> torch.Tensor:
        """The step at global step ``it`` on the batch ``xb`` -> the detached ``TERMS``."""
        ...


@dataclass
class EagerStep:
    """``pretrain_step`` run from Python, the schedules read at step ``it`` as numbers."""

    parts: StepParts
    lr: np.ndarray
    momentum: np.ndarray

    def __call__(self, xb: torch.Tensor, it: int) -> torch.Tensor:
        return pretrain_step(self.parts, xb, float(self.lr[it]), float(self.momentum[it]))


def compiled(parts: StepParts) -> StepParts:
    """The parts with their networks through torch.compile (fusing their elementwise work with the matmuls'
    outputs) and, when every shape is independent of the data (``method.static``), the losses too; the rest of
    the step stays eager."""
    losses = torch.compile(parts.losses) if parts.method.static else parts.losses
    return replace(parts, student_forward=torch.compile(parts.student_forward),
                   teacher_forward=torch.compile(parts.teacher_forward), losses=losses)


def make_step(parts: StepParts, lr: np.ndarray, momentum: np.ndarray, compile: bool = False, graphs: bool = False,
              required: bool = False) -> Step:
    """``pretrain_step`` as the trainer calls it, ``step(xb, it)``, with the schedules ``lr`` and ``momentum``
    (one value per global step): compiled (``compile``) and/or recorded as one CUDA graph (``graphs``; with
    ``required`` a failed capture is a ``GraphCaptureError``, else training goes on without the graph)."""
    if compile:
        parts = compiled(parts)
    if graphs:
        return GraphStep(functools.partial(pretrain_step, parts), lr, momentum, parts.gen, parts.device, capture=True,
                         required=required)
    return EagerStep(parts, lr, momentum)


class Pretrainer:
    def __init__(self, cfg: JbotConfig, split: Split, out_dir: str | Path, tracker: Tracker | None = None,
                 meta: dict[str, str] | None = None, source: BatchSource | None = None, comm: Comm = SINGLE,
                 device: torch.device | None = None, on_warning: Callable[[str], None] | None = None) -> None:
        """``split`` feeds the k-NN and health monitors and names the data (its train part is also the training set
        unless ``source`` is given; then its fingerprint is the source's). ``device``: the one the command picked (with
        torchrun's process group), else picked here from ``cfg.runtime``. ``on_warning`` hears a collapse warning
        (default: standard error)."""
        self.cfg, self.split, self.tracker, self.comm = cfg, split, tracker or NullTracker(), comm
        self.meta = dict(meta or {})  # kept in the checkpoint as is (e.g. the MLflow run id)
        self.out_dir = Path(out_dir)
        tc = cfg.pretrain
        self.device = runtime_device(cfg.runtime) if device is None else device
        self.source = source or MemorySource(split.train.x, tc.seed, self.device)
        self.batch = min(tc.batch_size, self.source.n_jets)
        self.steps = self.source.steps(self.batch, comm.world)
        total = tc.epochs * self.steps
        peak = tc.base_lr * self.batch / 256
        self.lr = lr_schedule(peak, total, int(round(tc.warmup_epochs * self.steps)), tc.lr_schedule, tc.min_lr)
        self.momentum = momentum_schedule(tc.teacher_momentum, tc.teacher_momentum_final, total)
        self.student, self.teacher = build_networks(cfg)
        self.student.to(self.device)
        self.teacher.to(self.device)
        self.centers = Centers(cfg.model.d_proj, tc.center_momentum).to(self.device)
        graphs = use_cuda_graphs(self.device, cfg.runtime.cuda_graphs, comm.world)
        # on CUDA no shape depends on the data and nothing waits for the host; on the CPU the heads skip the tokens
        # no loss reads (fewer FLOPs beat fewer host syncs there)
        self.method = Distillation(self.centers, cfg.augment, cfg.mask, tc, comm, static=self.device.type == "cuda",
                                  cols=columns(cfg.model.features))
        student_forward: Forward = self.student
        if comm.active:  # gradients averaged over the ranks in backward
            student_forward = torch.nn.parallel.DistributedDataParallel(
                self.student, find_unused_parameters=not cfg.mask.enabled)
        self.optimizer = torch.optim.AdamW(param_groups(self.student, tc.weight_decay), lr=float(self.lr[0]),
                                           capturable=graphs)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(tc.seed)
        self.epoch = 0
        self.step = 0  # steps done in the current epoch (a mid-epoch checkpoint resumes there)
        self._partial: dict[str, torch.Tensor] | None = None  # that epoch's running sums, from the checkpoint
        self.saved_epoch: int | None = None  # the last epoch this run wrote to checkpoint_path
        self.resumed_from: Path | None = None
        self.history: dict[str, list[float]] = {}
        self.history_steps: dict[str, list[int]] = {}
        self.parts = StepParts(self.method, self.student, self.teacher, self.centers, self.optimizer, self.gen, comm,
                               self.device, cfg.runtime.precision, tc.grad_clip, student_forward, self.teacher,
                               self.method.losses)
        self.health = HealthMonitor(split.train.x, tc, self.device)
        self.collapse = CollapseDetector.of(tc, cfg.model.d_proj)
        self.on_warning = on_warning or _warn
        self.step_fn: Step = make_step(self.parts, self.lr, self.momentum,
                                       compile=use_compile(self.device, cfg.runtime.compile), graphs=graphs,
                                       required=cfg.runtime.cuda_graphs == "on")

    # ------------------------------------------------------------------ state
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def state(self) -> dict[str, Any]:
        return {
            "config": public(self.cfg.model_dump(mode="json")),  # no password of any URI
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "centers": self.centers.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": {"generator": self.gen.get_state(), "torch": torch.get_rng_state()},
            "history": self.history,
            "history_steps": self.history_steps,
            "data_fingerprint": self.split.fingerprint,
            "meta": self.meta,
        }

    def restore(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint ``path``; ``state``: its contents when the caller has read them already."""
        state = load_checkpoint(path) if state is None else state
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.centers.load_state_dict(state["centers"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.step = int(state.get("step", 0))
        self._partial = state.get("partial") if self.step else None
        self.gen.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        saved_steps = state.get("history_steps") or {}
        self.history_steps = {k: list(saved_steps.get(k) or range(1, len(v) + 1)) for k, v in self.history.items()}
        self.resumed_from = Path(path)
        self.collapse.replay(self.history)

    # ------------------------------------------------------------------ training
    def train_step(self, xb: torch.Tensor, it: int) -> torch.Tensor:
        """One full step (``pretrain_step``, as ``step_fn`` runs it) at global step ``it`` on a batch already on the
        device; returns the detached loss terms and monitors (no host sync)."""
        return self.step_fn(xb, it)

    def _kept(self) -> str:
        if self.saved_epoch is not None:
            return f"the last good checkpoint (epoch {self.saved_epoch}) is kept at {self.checkpoint_path}"
        if self.resumed_from is not None:
            return f"this run wrote no checkpoint; the one it resumed from ({self.resumed_from}) is unchanged"
        return "no checkpoint was written (no epoch completed)"

    def run_epoch(self, on_step: Callable[[int, int], None] | None = None) -> dict[str, float]:
        self.student.train()
        tc, comm = self.cfg.pretrain, self.comm
        sums = torch.zeros(len(TERMS), device=self.device)
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        if self._partial is not None:  # resumed mid-epoch: the running sums of the steps already done
            sums, first_bad = self._partial["sums"].to(self.device), self._partial["first_bad"].to(self.device)
            self._partial = None
        start = time.perf_counter()
        done_before = self.step
        batches = self.source.batches(self.epoch, self.step, self.batch, comm.rank, comm.world)
        for xb in batches:
            i = self.step
            terms = self.train_step(xb, self.epoch * self.steps + i)
            sums += terms
            bad = ~torch.isfinite(terms[0]) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, i), first_bad)
            self.step += 1
            if on_step is not None:  # (this step's index in the epoch, steps per epoch)
                on_step(i, self.steps)
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self.step < self.steps:
                self._save({"sums": sums.detach().cpu(), "first_bad": first_bad.cpu()})
            if self.step < self.steps and self._stop_requested():  # SIGTERM / SIGUSR1: a checkpoint at this step
                self._save({"sums": sums.detach().cpu(), "first_bad": first_bad.cpu()})
                self._stop()
        sums = comm.sum(sums) / comm.world  # every rank's mean (one collective per epoch)
        values = (sums / self.steps).tolist()  # the one host sync of the epoch
        bad_step = int(comm.minimum(torch.where(first_bad >= 0, first_bad, torch.full_like(first_bad, self.steps))))
        bad_step = -1 if bad_step >= self.steps else bad_step
        self.step = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        trained = self.steps - done_before
        if bad_step >= 0:
            raise TrainingDiverged(
                f"loss became NaN/inf at epoch {self.epoch + 1}, step {bad_step + 1} of {self.steps}; "
                f"{self._kept()}. Try a lower pretrain.base_lr, pretrain.grad_clip, or a larger "
                "pretrain.warmup_epochs."
            )
        it_last = (self.epoch + 1) * self.steps - 1
        # the losses under train/ (the headline curves), what diagnoses them under diag/, speed under system/
        metrics = {f"{'train' if name in LOSS_TERMS else 'diag'}/{name}": v
                   for name, v in zip(TERMS, values, strict=True)}
        metrics.update({
            "diag/lr": float(self.lr[it_last]),
            "diag/teacher_momentum": float(self.momentum[it_last]),
            "diag/center_norm_cls": float(self.centers.cls.norm()),
            "diag/center_norm_part": float(self.centers.part.norm()),
            "system/jets_per_s": trained * self.batch / elapsed,
            "system/epoch_seconds": elapsed,
        })
        return metrics

    def _save(self, partial: dict[str, torch.Tensor] | None) -> None:
        """Rank 0 writes the checkpoint (atomically); mid-epoch ones carry the epoch's running sums."""
        if not self.comm.is_main:
            return
        state = self.state()
        if partial is not None:
            state["partial"] = partial
        save_checkpoint(self.checkpoint_path, state)
        self.saved_epoch = self.epoch

    def _stop_requested(self, boundary: bool = False) -> bool:
        """A stop signal arrived (on any rank). One process reads a flag after every step (no device sync);
        under torchrun the ranks agree every ``STOP_POLL`` steps and at epoch ends, so all stop at the same step."""
        if not self.comm.active:
            return signals.pending() is not None
        if not boundary and self.step % STOP_POLL:
            return False
        flag = torch.tensor(float(signals.pending() is not None), device=self.device)
        return bool(self.comm.sum(flag).item() > 0)

    def _stop(self) -> None:
        """Raise the stop, saying where training stopped (a rank that did not receive the signal itself stops as
        if it had SIGTERM)."""
        try:
            signals.raise_pending()
            raise signals.Stopped(signal.SIGTERM)
        except KeyboardInterrupt as exc:  # Stopped, or Ctrl-C received inside the step loop
            signals.mark(exc, f"epoch {self.epoch + 1}, step {self.step} of {self.steps}" if self.step
                         else f"the end of epoch {self.epoch}")
            raise

    def knn_accuracy(self) -> float | None:
        """k-NN probe (k from config) on frozen student [CLS]: train subset -> validation subset."""
        tc, split = self.cfg.pretrain, self.split
        classes = np.unique(split.train.y)
        rng = np.random.default_rng(tc.seed)
        ref = rng.permutation(len(split.train))[:KNN_REFERENCE]
        val_idx = np.flatnonzero(np.isin(split.val.y, classes))
        val_idx = rng.permutation(val_idx)[:tc.knn_val_size]
        if len(val_idx) == 0 or not self.comm.is_main:
            return None  # no validation split (data.n_val = 0): nothing to monitor; rank 0 alone monitors
        encoder = self.student.encoder
        ref_emb, _ = embed(encoder, split.train.x[ref], device=self.device)
        val_emb, _ = embed(encoder, split.val.x[val_idx], device=self.device)
        pred = knn_classify(ref_emb, split.train.y[ref], val_emb, k=tc.knn_k)
        return float((pred == split.val.y[val_idx]).mean())

    def fit(self, on_step: Callable[[int, int], None] | None = None,
            on_epoch: Callable[[EpochReport], bool | None] | None = None) -> PretrainResult:
        """``on_epoch`` may return True to stop after this epoch (a pruned sweep trial)."""
        tc = self.cfg.pretrain
        start = time.perf_counter()
        knn = None
        with signals.deferred():  # a stop signal ends training at the next step boundary, with a checkpoint there
            while self.epoch < tc.epochs:
                metrics = self.run_epoch(on_step)
                self.epoch += 1
                last = self.epoch == tc.epochs
                if (tc.knn_every and self.epoch % tc.knn_every == 0) or last:
                    knn = self.knn_accuracy()
                    if knn is not None:
                        metrics["val/knn_acc"] = knn
                if self.comm.is_main:  # rank 0 alone monitors, as for the k-NN
                    metrics.update(self.health.measure(self.student, self.teacher, self.centers.cls))
                    alarm = self.collapse.update(metrics, self.epoch)
                    if alarm is not None:
                        self.tracker.set_tags({"jbot.collapse": f"epoch {self.epoch}"})
                        self.on_warning(alarm)
                for k, v in metrics.items():
                    self.history.setdefault(k, []).append(v)
                    self.history_steps.setdefault(k, []).append(self.epoch)
                self.tracker.log_metrics(metrics, step=self.epoch)
                self._save(None)
                if self._stop_requested(boundary=True):
                    self._stop()
                if on_epoch is not None and on_epoch(EpochReport(self.epoch, tc.epochs, metrics,
                                                             self.collapse.collapsed)):
                    break
        return PretrainResult(self.checkpoint_path, self.epoch, self.history, knn, time.perf_counter() - start,
                              self.history_steps)


def pretrain(cfg: JbotConfig, split: Split, out_dir: str | Path, tracker: Tracker | None = None,
             resume: str | Path | None = None, on_step: Callable[[int, int], None] | None = None,
             on_epoch: Callable[[EpochReport], bool | None] | None = None,
             meta: dict[str, str] | None = None, source: BatchSource | None = None,
             comm: Comm = SINGLE, *, resume_state: dict[str, Any] | None = None,
             device: torch.device | None = None, on_warning: Callable[[str], None] | None = None) -> PretrainResult:
    """Train (or continue from ``resume``, whose contents ``resume_state`` may hold already) and return the final
    checkpoint and monitors."""
    trainer = Pretrainer(cfg, split, out_dir, tracker, meta, source, comm, device, on_warning)
    if resume is not None:
        trainer.restore(resume, resume_state)
    return trainer.fit(on_step, on_epoch)
