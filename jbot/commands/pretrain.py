"""``jbot pretrain``: self-distillation pre-training as one MLflow run.

1. ``commands.resume.prepare``: the config, and with ``--resume`` the checkpoint, read once (``Resume``): its
   config under the command's overrides, the epochs left, for ``--resume auto`` the same settings as the
   command's (torch-free until a checkpoint is read, so bad input fails before anything heavy loads).
2. ``tracked_pretrain``: join torchrun's group if any and pick the device (once), read the split (or open the
   shard stream), refuse a resume on other data, open (or continue) the run, train (``train.pretrain``), log the
   monitors and log the final checkpoint once, inside the MLflow model. A stop signal ends the run KILLED with
   the checkpoint it saved and the command that continues it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jbot import signals
from jbot.commands.common import (
    EXAMPLE_JETS,
    STEP_IS_EPOCH,
    TrackedResult,
    data_tags,
    load_split,
    log_json_and_curves,
    log_split,
)
from jbot.commands.resume import Resume, check_same_data, resume_tag
from jbot.config import JbotConfig
from jbot.data.shards import read_rows
from jbot.data.splits import Split
from jbot.data.stream import StreamSource, monitor_split, open_stream
from jbot.model.sizes import model_label
from jbot.tracking.mlflow import tracked_run
from jbot.tracking.models import log_jbot_model
from jbot.train.distributed import setup, teardown
from jbot.train.pretrain import KNN_REFERENCE, EpochReport, PretrainResult, pretrain

# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class PretrainInputs:
    """What pre-training reads: its split (the training jets and the k-NN monitor's, or for streamed data the
    monitor's alone, with the training files' fingerprint) and the streamed source if any."""

    split: Split
    source: StreamSource | None

    @property
    def n_train(self) -> int:
        return len(self.split.train) if self.source is None else self.source.n_jets

    def examples(self, n: int) -> np.ndarray:
        """A few training jets (the logged model's input example)."""
        if self.source is None or len(self.split.train):
            return self.split.train.x[:n]
        shard = self.source.shards[0]
        return read_rows(shard, 0, min(n, shard.n), self.source.n_particles, features=self.source.features)[0]


def pretrain_inputs(cfg: JbotConfig, device: Any) -> PretrainInputs:
    if not cfg.data.stream:
        return PretrainInputs(load_split(cfg), None)
    d, tc = cfg.data, cfg.pretrain
    source = open_stream(d.dir, d.window, tc.seed, device, cfg.model.n_particles, cfg.model.features)
    return PretrainInputs(monitor_split(source, d.val_dir, KNN_REFERENCE, tc.knn_val_size, tc.seed), source)


# --------------------------------------------------------------------------------------------- the run


def tracked_pretrain(cfg: JbotConfig, *, resume: Resume | None = None, experiment: str | None = None,
                     on_step: Callable[[int, int], None] | None = None,
                     on_epoch: Callable[[EpochReport], bool | None] | None = None,
                     parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                     on_start: Callable[[str], None] | None = None, allow_other_data: bool = False,
                     run_name: str | None = None,
                     on_notice: Callable[[str], None] | None = None,
                     on_warning: Callable[[str], None] | None = None) -> TrackedResult[PretrainResult]:
    """Pre-train as one MLflow run (``on_notice`` hears what the user should know, e.g. a batch size cut to the
    training set; ``on_warning``, a collapse of the representation, by default on standard error). With
    ``resume``, training continues from it on the same data (its fingerprint must match
    unless ``allow_other_data``) and in its MLflow run when that run is in this store; the checkpoint is written
    under ``cfg.pretrain.out_dir`` only."""
    comm, device = setup(cfg.runtime)
    inputs = pretrain_inputs(cfg, device)
    split, out_dir = inputs.split, Path(cfg.pretrain.out_dir)
    if resume is not None:
        check_same_data(cfg, split.fingerprint, resume, allow_other_data)
    resume_path, resume_state = (None, None) if resume is None else (resume.path, resume.state)
    if not comm.is_main:  # another rank of a torchrun job: trains its block of each batch, logs and writes nothing
        try:
            return TrackedResult("", None, pretrain(cfg, split, out_dir, None, resume_path, on_step, None,
                                                    source=inputs.source, comm=comm, resume_state=resume_state,
                                                    device=device))
        finally:
            teardown(comm)
    all_tags = {**data_tags(split, str(device), inputs.n_train), **(tags or {})}
    if comm.active:
        all_tags["jbot.world_size"] = str(comm.world)
    if resume is not None:
        all_tags["jbot.resumed_from"] = str(resume.path)
    label = model_label(cfg.model)
    with tracked_run(cfg, "pretrain", experiment=experiment, tags=all_tags, parent_run_id=parent_run_id,
                     continue_run=None if resume is None else resume.run_id,
                     run_name=run_name or f"pretrain-{label}-{split.preset}-e{cfg.pretrain.epochs}",
                     description=f"jBOT pre-training ({label}: D={cfg.model.d_model}, L={cfg.model.n_layers}, "
                                 f"H={cfg.model.n_heads}) on {split.preset} jets from {cfg.data.dir}, "
                                 f"{cfg.pretrain.epochs} epochs. {STEP_IS_EPOCH}") as run:
        log_split(run, cfg, split, inputs.n_train)
        if on_start is not None:
            on_start(run.run_id)
        batch = min(cfg.pretrain.batch_size, inputs.n_train)
        if batch < cfg.pretrain.batch_size:  # the param says what was asked; this, what was used
            run.log_params({"pretrain.batch_size_used": batch})
            if on_notice is not None:
                on_notice(f"pretrain.batch_size {cfg.pretrain.batch_size} is more than the {inputs.n_train} "
                          f"training jets: training on batches of {batch} (lr = base_lr x {batch}/256)")
        try:
            result: PretrainResult = pretrain(cfg, split, out_dir, run, resume_path, on_step, on_epoch,
                                              meta={"mlflow_run_id": run.run_id}, source=inputs.source, comm=comm,
                                              resume_state=resume_state, device=device, on_warning=on_warning)
        except KeyboardInterrupt as exc:
            ckpt = out_dir / "checkpoint.pt"
            if ckpt.is_file():  # the last completed epoch or, after a stop signal, the step it stopped at
                run.log_artifact(ckpt, "checkpoints")
                run.set_tags({"jbot.resume_command": resume_tag(ckpt),
                              "jbot.stopped": signals.describe(exc, at=True)})
            raise
        finally:
            teardown(comm)
        # the last epoch's values are the last points of the per-epoch series: they go to pretrain.json only, not
        # again as single-point metrics (which the UI would chart before the learning curves)
        final = {f"final/{k.split('/', 1)[1]}": v[-1] for k, v in result.history.items() if k.startswith("train/")}
        run.log_metrics({"system/wall_seconds": result.seconds}, step=result.epochs)
        final["system/wall_seconds"] = result.seconds
        if result.knn_acc is not None:
            final["val/knn_acc"] = result.knn_acc
        log_json_and_curves(run, out_dir, "pretrain", final, result.history, result.steps)
        model_uri = log_jbot_model(result.checkpoint, inputs.examples(EXAMPLE_JETS), cfg.model.d_model,
                                   classifier=False, features=cfg.model.features)
    return TrackedResult(run.run_id, model_uri, result)
