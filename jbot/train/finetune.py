"""Fine-tuning (docs/method.md §7): pre-trained encoder + fresh classifier head, Adam, layer-wise LR decay as optimizer
parameter groups, early stopping on validation accuracy with the best weights restored. ``encoder=None`` is
the supervised baseline: the same encoder and head from random init, same data and optimiser, no LLRD."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jbot import signals
from jbot.config import ConfigError, FinetuneConfig, JbotConfig
from jbot.data.splits import Part, Split
from jbot.evaluate.embed import infer
from jbot.model.encoder import JetEncoder
from jbot.model.heads import ClassifierHead
from jbot.model.registry import build_encoder
from jbot.redaction import public
from jbot.train.device import autocast, runtime_device
from jbot.train.pretrain import TrainingDiverged


class JetClassifier(nn.Module):
    """Encoder + classifier head on the [CLS] output; returns logits (B, C)."""

    def __init__(self, encoder: JetEncoder, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder.set_dropout(dropout)
        self.head = ClassifierHead(encoder.cfg.d_model, n_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, _ = self.encoder(x)
        return self.head(cls)


def llrd_param_groups(model: JetClassifier, base_lr: float, decay: float) -> list[dict[str, Any]]:
    """BEiT convention: head = base; block j from the top (last block j = 1) = base * d^j; embedding, [CLS],
    [MASK] (and jet conditioning) = base * d^(L + 1). Every parameter sits in exactly one group."""
    n_layers = len(model.encoder.blocks)
    groups: list[dict[str, Any]] = [{"name": "head", "params": list(model.head.parameters()), "lr": base_lr}]
    for i, block in enumerate(model.encoder.blocks):
        depth = n_layers - i  # last block -> 1
        groups.append({"name": f"block{i}", "params": list(block.parameters()), "lr": base_lr * decay**depth})
    in_blocks = {id(p) for b in model.encoder.blocks for p in b.parameters()}
    embedding = [p for p in model.encoder.parameters() if id(p) not in in_blocks]
    groups.append({"name": "embedding", "params": embedding, "lr": base_lr * decay ** (n_layers + 1)})
    return groups


def balanced_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset: the same count per class, floor(fraction * N / C), drawn by seed."""
    classes = np.unique(y)
    per_class = max(1, int(fraction * len(y) / len(classes)))
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} training jets, a balanced subset needs {per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


class EarlyStopping:
    """Tracks the best score, keeps a copy of the best weights, says when ``patience`` epochs brought nothing."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = -float("inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, score: float, model: nn.Module, epoch: int) -> bool:
        """Record one epoch; True = stop now."""
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class FinetuneResult:
    model: JetClassifier
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    best_val_acc: float = 0.0
    n_train: int = 0
    seconds: float = 0.0
    continued_head: bool = False  # started from a trained head rather than a fresh one


def classifier_state(result: FinetuneResult, cfg: JbotConfig, class_names: tuple[str, ...],
                     metrics: dict[str, float]) -> dict[str, Any]:
    """Checkpoint content of a fine-tuned classifier (rebuilds from the checkpoint alone)."""
    return {
        "kind": "classifier",
        "config": public(cfg.model_dump(mode="json")),  # no password of any URI
        "encoder": result.model.encoder.state_dict(),
        "classifier": result.model.head.state_dict(),
        "class_names": list(class_names),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "history": result.history,
    }


def predict_proba(model: JetClassifier, x: np.ndarray, device: torch.device, batch_size: int = 4096) -> np.ndarray:
    probs = infer(model.encoder, x, head=model.head, batch_size=batch_size, device=device).probs
    assert probs is not None
    return probs


def _train_epoch(model: JetClassifier, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 cfg: FinetuneConfig, gen: torch.Generator, precision: str) -> float:
    model.train()
    n = x.shape[0]
    batch = min(cfg.batch_size, n)
    perm = torch.randperm(n, generator=gen, device=x.device)
    total = torch.zeros((), device=x.device)
    steps = max(1, -(-n // batch))
    for i in range(steps):
        signals.raise_pending()
        idx = perm[i * batch:(i + 1) * batch]
        with autocast(x.device, precision):
            loss = F.cross_entropy(model(x[idx]).float(), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total) / steps  # one host sync per epoch


def finetune(cfg: JbotConfig, split: Split, encoder: JetEncoder | None,
             on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
             head: ClassifierHead | None = None, device: torch.device | None = None) -> FinetuneResult:
    """``on_epoch(epoch, metrics)`` may return True to stop early (a pruned sweep trial). ``head``: a trained
    classifier head to continue from (a fine-tuned or imported classifier trained on the task's labels: the caller
    checks the names, ``commands.finetune.same_labels``); a head of another class count is not used, the head
    starts fresh. ``device``: the command's (picked once from ``cfg.runtime`` when None)."""
    ft = cfg.finetune
    if len(split.val) == 0:
        raise ConfigError("fine-tuning needs a validation split for early stopping: set data.n_val > 0")
    device = runtime_device(cfg.runtime) if device is None else device
    scratch = encoder is None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ft.seed)
        if encoder is None:
            encoder = build_encoder(cfg.model)
        model = JetClassifier(copy.deepcopy(encoder), split.n_classes, ft.dropout)
        continued = False
        if head is not None and head.n_classes == split.n_classes:
            model.head.load_state_dict(head.state_dict())
            continued = True
        model = model.to(device)
    groups = llrd_param_groups(model, ft.lr, 1.0 if scratch else ft.llrd_decay)
    optimizer = torch.optim.Adam(groups, lr=ft.lr, weight_decay=ft.weight_decay)
    train: Part = split.train
    if ft.fraction < 1.0:
        train = train.subset(balanced_subset(train.y, ft.fraction, ft.seed))
    x = torch.as_tensor(train.x, device=device)
    y = torch.as_tensor(train.y, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(ft.seed)
    stopper = EarlyStopping(ft.patience)
    history: dict[str, list[float]] = {"train/loss": [], "val/acc": []}
    start = time.perf_counter()
    # dropout draws from the default generator: seeded here (and given back after), so that a fine-tuning is
    # repeatable whatever ran before it in the process
    # a stop signal (SIGTERM, SIGUSR1, Ctrl-C) is raised at the next batch boundary, never inside a logging call
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), signals.deferred():
        torch.manual_seed(ft.seed + 1)
        for epoch in range(1, ft.epochs + 1):
            loss = _train_epoch(model, optimizer, x, y, ft, gen, cfg.runtime.precision)
            if not np.isfinite(loss):
                raise TrainingDiverged(f"fine-tuning loss became NaN/inf in epoch {epoch}; lower finetune.lr")
            val_acc = float((predict_proba(model, split.val.x, device).argmax(1) == split.val.y).mean())
            history["train/loss"].append(loss)
            history["val/acc"].append(val_acc)
            stop_now = stopper.update(val_acc, model, epoch)
            if on_epoch is not None and on_epoch(epoch, {"train/loss": loss, "val/acc": val_acc}):
                stop_now = True
            signals.raise_pending()
            if stop_now:
                break
    stopper.restore(model)
    return FinetuneResult(model, history, stopper.best_epoch, stopper.best, len(train), time.perf_counter() - start,
                          continued)
