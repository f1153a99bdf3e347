"""Tracked commands: each wraps one engine function in one MLflow run (params, tags, metrics, artifacts, model).

The engine (data/, model/, ssl/, train/, evaluate/) never imports mlflow; this module joins it to tracking/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from jbot import signals
from jbot.config import ConfigError, JbotConfig, flatten
from jbot.data.shards import read_rows
from jbot.data.splits import Split, make_split
from jbot.data.stream import StreamSource, monitor_split, open_stream
from jbot.evaluate.probe import ProbeResult, run_probe
from jbot.evaluate.table import write_json
from jbot.io import scratch_dir
from jbot.plots import learning_curves, write_html
from jbot.tracking.mlflow import MlflowRun, connect, store_uri, tracked_run
from jbot.tracking.models import load_from_uri, log_jbot_model, provenance
from jbot.train.checkpoint import CheckpointError, LoadedModel
from jbot.train.device import runtime_device
from jbot.train.distributed import setup, teardown
from jbot.train.pretrain import KNN_REFERENCE, EpochReport, PretrainResult, pretrain

if TYPE_CHECKING:
    from jbot.anomaly.detect import AnomalyResult
    from jbot.train.finetune import FinetuneResult

P = TypeVar("P")

EXAMPLE_JETS = 4


def settings_used(cfg: JbotConfig, preset: str, loaded: LoadedModel | None = None) -> JbotConfig:
    """``cfg`` as a command really runs it: on the split of ``preset`` and, for a loaded encoder, with that
    encoder's model settings. Its params are then what was used (``data.preset`` = the split's, ``model.*`` = the
    encoder's), never the defaults of a config the command overrode."""
    update: dict[str, Any] = {"data": cfg.data.model_copy(update={"preset": preset})}
    if loaded is not None:
        update["model"] = loaded.encoder.cfg
    return cfg.model_copy(update=update)


def load_split(cfg: JbotConfig, preset: str | None = None) -> Split:
    d = cfg.data
    return make_split(d.dir, preset or d.preset, d.n_train, d.n_val, d.n_test, d.seed)


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
        return read_rows(shard, 0, min(n, shard.n), self.source.n_particles)[0]


def pretrain_inputs(cfg: JbotConfig, device: torch.device) -> PretrainInputs:
    if not cfg.data.stream:
        return PretrainInputs(load_split(cfg), None)
    d, tc = cfg.data, cfg.pretrain
    source = open_stream(d.dir, d.window, tc.seed, device, cfg.model.n_particles)
    return PretrainInputs(monitor_split(source, d.val_dir, KNN_REFERENCE, tc.knn_val_size, tc.seed), source)


def model_label(cfg: JbotConfig) -> str:
    """S and B for the paper's sizes (Table 1), else D<d_model>L<n_layers>."""
    m = cfg.model
    return {(32, 2, 4): "S", (64, 4, 6): "B"}.get((m.d_model, m.n_layers, m.n_heads), f"D{m.d_model}L{m.n_layers}")


def _log_split(run: MlflowRun, cfg: JbotConfig, split: Split, n_train: int | None = None) -> None:
    """``n_train`` when the training jets are not the split's own (streamed)."""
    run.log_dataset(cfg.data.dir, split.preset, split.fingerprint,
                    {"n_train": len(split.train) if n_train is None else n_train, "n_val": len(split.val),
                     "n_test": len(split.test)})


def _data_tags(split: Split, device: str, n_train: int | None = None) -> dict[str, str]:
    return {"jbot.data_fingerprint": split.fingerprint, "jbot.preset": split.preset, "jbot.device": device,
            "jbot.n_train": str(len(split.train) if n_train is None else n_train)}


def _log_json_and_curves(run: MlflowRun, out_dir: Path, name: str, metrics: dict[str, float],
                         history: dict[str, list[float]] | None = None,
                         steps: dict[str, list[int]] | None = None) -> None:
    run.log_artifact(write_json(out_dir / f"{name}.json", metrics), "metrics")
    if history:
        fig = learning_curves({k: v for k, v in history.items() if "seconds" not in k and "jets_per_s" not in k},
                              f"{name}: learning curves", steps)
        run.log_artifact(write_html(fig, out_dir / "learning_curves.html"), "plots")


@dataclass
class TrackedResult(Generic[P]):
    """A command's MLflow run: its id, the logged model's URI (if any) and what the command computed."""

    run_id: str
    model_uri: str | None
    payload: P


@dataclass
class FinetuneOutcome:
    metrics: dict[str, float]  # val/best_acc, train/*, and test/* unless the test split was left alone
    result: FinetuneResult
    checkpoint: Path
    class_names: tuple[str, ...]
    split: Split


@dataclass
class AnomalyOutcome:
    result: AnomalyResult
    paths: dict[str, Path]  # the report's files: report (HTML), metrics (JSON), table (text)
    table: str  # the AUC table beside the paper's, as text


def tracked_pretrain(cfg: JbotConfig, *, resume: str | Path | None = None, experiment: str | None = None,
                     on_step: Callable[[int], None] | None = None,
                     on_epoch: Callable[[EpochReport], bool | None] | None = None,
                     parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                     on_start: Callable[[str], None] | None = None, allow_other_data: bool = False,
                     run_name: str | None = None,
                     on_notice: Callable[[str], None] | None = None) -> TrackedResult[PretrainResult]:
    """Pre-train as one MLflow run (``on_notice`` hears what the user should know, e.g. a batch size cut to the
    training set). With ``resume`` (a checkpoint), training continues from it on the same data
    (its fingerprint must match unless ``allow_other_data``) and in its MLflow run when that run is in this store;
    the checkpoint is written under ``cfg.pretrain.out_dir`` only."""
    comm, torch_device = setup(cfg.runtime)
    inputs = pretrain_inputs(cfg, torch_device)
    split, out_dir, device = inputs.split, Path(cfg.pretrain.out_dir), str(torch_device)
    earlier_run = None if resume is None else check_resumable(cfg, split.fingerprint, resume, allow_other_data)
    if not comm.is_main:  # another rank of a torchrun job: trains its block of each batch, logs and writes nothing
        try:
            return TrackedResult("", None, pretrain(cfg, split, out_dir, None, resume, on_step, None,
                                                    source=inputs.source, comm=comm))
        finally:
            teardown(comm)
    all_tags = {**_data_tags(split, device, inputs.n_train), **(tags or {})}
    if comm.active:
        all_tags["jbot.world_size"] = str(comm.world)
    if resume is not None:
        all_tags["jbot.resumed_from"] = str(resume)
    name = run_name or f"pretrain-{model_label(cfg)}-{split.preset}-e{cfg.pretrain.epochs}"
    with tracked_run(cfg, "pretrain", experiment=experiment, tags=all_tags, parent_run_id=parent_run_id,
                     continue_run=earlier_run, run_name=name,
                     description=f"jBOT pre-training ({model_label(cfg)}: D={cfg.model.d_model}, "
                                 f"L={cfg.model.n_layers}, H={cfg.model.n_heads}) on {split.preset} jets from "
                                 f"{cfg.data.dir}, {cfg.pretrain.epochs} epochs") as run:
        _log_split(run, cfg, split, inputs.n_train)
        if on_start is not None:
            on_start(run.run_id)
        batch = min(cfg.pretrain.batch_size, inputs.n_train)
        if batch < cfg.pretrain.batch_size:  # the param says what was asked; this, what was used
            run.log_params({"pretrain.batch_size_used": batch})
            if on_notice is not None:
                on_notice(f"pretrain.batch_size {cfg.pretrain.batch_size} is more than the {inputs.n_train} "
                          f"training jets: training on batches of {batch} (lr = base_lr x {batch}/256)")
        try:
            result: PretrainResult = pretrain(cfg, split, out_dir, run, resume, on_step, on_epoch,
                                              meta={"mlflow_run_id": run.run_id}, source=inputs.source, comm=comm)
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
        run.log_metrics({"train/wall_seconds": result.seconds}, step=result.epochs)
        final["train/wall_seconds"] = result.seconds
        if result.knn_acc is not None:
            final["val/knn_acc"] = result.knn_acc
        run.log_artifact(result.checkpoint, "checkpoints")
        _log_json_and_curves(run, out_dir, "pretrain", final, result.history, result.steps)
        model_uri = log_jbot_model(result.checkpoint, inputs.examples(EXAMPLE_JETS))
    return TrackedResult(run.run_id, model_uri, result)


def resume_command(checkpoint: Path) -> str:
    """The command that continues a stopped pre-training from its checkpoint."""
    return f"jbot pretrain --resume {checkpoint}"


def resume_tag(checkpoint: Path) -> str:
    """The resume command for the run's tag: with the checkpoint's absolute path (it works from any folder)."""
    return resume_command(checkpoint.absolute())


def check_more_epochs(cfg: JbotConfig, state: dict[str, Any], resume: str | Path) -> None:
    done = int(state.get("epoch", 0))
    if cfg.pretrain.epochs <= done:
        raise ConfigError(f"{resume} has already trained {done} epochs (pretrain.epochs = {cfg.pretrain.epochs}); "
                          f"to train on, pass --set pretrain.epochs=N with N > {done}")


def check_resumable(cfg: JbotConfig, fingerprint: str, resume: str | Path, allow_other_data: bool) -> str | None:
    """Refuse a resume that would train nothing or on other data; returns the checkpoint's MLflow run id."""
    from jbot.data.jetnet import DataError
    from jbot.train.checkpoint import load_checkpoint

    state = load_checkpoint(resume)
    check_more_epochs(cfg, state, resume)
    saved = state.get("data_fingerprint")
    if saved and saved != fingerprint and not allow_other_data:
        raise DataError(f"{resume} was trained on data with fingerprint {saved[:16]}, but {cfg.data.dir} "
                        f"({cfg.data.preset}) has {fingerprint[:16]}: other files or another split. Resume on "
                        "the same data, or pass --allow-other-data to continue on these jets")
    return (state.get("meta") or {}).get("mlflow_run_id")


def tracked_probe(cfg: JbotConfig, source: str, preset: str, *, out_dir: Path | None = None,
                  experiment: str | None = None, parent_run_id: str | None = None,
                  run_name: str | None = None) -> TrackedResult[ProbeResult]:
    uri = store_uri(cfg)
    loaded: LoadedModel = load_from_uri(source, uri)
    cfg = settings_used(cfg, preset, loaded)
    split = load_split(cfg)
    device = runtime_device(cfg.runtime)
    tags = {**_data_tags(split, str(device)), **provenance(source, uri)}
    with tracked_run(cfg, "probe", experiment=experiment, tags=tags, run_name=run_name or f"probe-{split.preset}",
                     description=f"k-NN and linear probes and clustering of the frozen encoder {source}",
                     parent_run_id=parent_run_id) as run:
        _log_split(run, cfg, split)
        result: ProbeResult = run_probe(loaded.encoder, split, cfg.probe, device, n_folds=cfg.evaluate.n_folds)
        run.log_metrics(result.metrics)
        folder = out_dir or scratch_dir("probe-")
        _log_json_and_curves(run, folder, "probe", result.metrics)
        from jbot.plots import embedding_map

        fig = embedding_map(result.test_embedding, split.test.y, split.class_names, "frozen [CLS] (test jets)")
        run.log_artifact(write_html(fig, folder / "embedding_map.html"), "plots")
    return TrackedResult(run.run_id, None, result)


def test_metrics(split: Split, probs: np.ndarray, n_folds: int) -> dict[str, float]:
    """``test/acc``, ``test/auc_<class>`` and their ``_std`` over stratified folds of the test split."""
    from jbot.evaluate.metrics import classification_metrics

    return {f"test/{k}": v for k, v in classification_metrics(split.test.y, probs, split.class_names,
                                                              n_folds).items()}


def evaluate_stored_run(cfg: JbotConfig, run_id: str) -> tuple[dict[str, float], Path, Split]:
    """A finished fine-tuning run evaluated on the test split once: its classifier checkpoint is downloaded, run on
    the test jets (``cfg`` = the run's settings), and the metrics logged on that run. Returns the metrics, the
    checkpoint's local path and the split."""
    from jbot.evaluate.embed import infer

    client = connect(store_uri(cfg))
    ckpt = Path(client.download_artifacts(run_id, "checkpoints/classifier.pt", str(scratch_dir("best-"))))
    loaded = load_from_uri(str(ckpt), store_uri(cfg))
    split = load_split(cfg, cfg.finetune.task)
    probs = infer(loaded.encoder, split.test.x, head=loaded.classifier, device=runtime_device(cfg.runtime)).probs
    if probs is None:
        raise CheckpointError(f"run {run_id}: its checkpoint holds no classifier head")
    metrics = test_metrics(split, probs, cfg.evaluate.n_folds)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    return metrics, ckpt, split


def tracked_finetune(cfg: JbotConfig, source: str | None, *, out_dir: Path, experiment: str | None = None,
                     parent_run_id: str | None = None,
                     on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
                     tags: dict[str, str] | None = None, on_start: Callable[[str], None] | None = None,
                     evaluate_test: bool = True, run_name: str | None = None) -> TrackedResult[FinetuneOutcome]:
    """Fine-tune ``source`` (or train from scratch when None). With ``evaluate_test`` the test metrics are
    computed once on the restored best weights and the classifier is logged as a model; sweep trials pass False
    (they are selected on validation accuracy only)."""
    from jbot.plots import roc_curves
    from jbot.train.checkpoint import save_checkpoint
    from jbot.train.finetune import classifier_state, finetune, predict_proba

    uri = store_uri(cfg)
    loaded = load_from_uri(source, uri) if source is not None else None
    cfg = settings_used(cfg, cfg.finetune.task, loaded)
    split = load_split(cfg)
    device = runtime_device(cfg.runtime)
    all_tags = {**_data_tags(split, str(device)), "jbot.from_scratch": str(loaded is None).lower(), **(tags or {})}
    if source is not None:
        all_tags.update(provenance(source, uri))
    name = run_name or f"finetune-{cfg.finetune.fraction:.0%}-{'scratch' if loaded is None else 'pretrained'}"
    origin = "from scratch" if loaded is None else f"fine-tuning {source}"
    with tracked_run(cfg, "finetune", experiment=experiment, tags=all_tags, run_name=name,
                     description=f"{cfg.finetune.task} tagger, {origin}, {cfg.finetune.fraction:.0%} of the labels",
                     parent_run_id=parent_run_id) as run:
        _log_split(run, cfg, split)
        if on_start is not None:
            on_start(run.run_id)

        def log_epoch(epoch: int, metrics: dict[str, float]) -> bool | None:
            run.log_metrics(metrics, step=epoch)
            return on_epoch(epoch, metrics) if on_epoch is not None else None

        result = finetune(cfg, split, loaded.encoder if loaded else None, on_epoch=log_epoch,
                          head=loaded.classifier if loaded else None)
        if result.continued_head:
            run.set_tags({"jbot.continued_head": "true"})
        metrics = {"val/best_acc": result.best_val_acc, "train/best_epoch": float(result.best_epoch),
                   "train/n_jets": float(result.n_train), "train/wall_seconds": result.seconds}
        probs = None
        if evaluate_test:
            probs = predict_proba(result.model, split.test.x, device)
            metrics.update(test_metrics(split, probs, cfg.evaluate.n_folds))
        run.log_metrics(metrics)
        ckpt = save_checkpoint(out_dir / "classifier.pt", classifier_state(result, cfg, split.class_names, metrics))
        run.log_artifact(ckpt, "checkpoints")
        _log_json_and_curves(run, out_dir, "finetune", metrics, result.history)
        model_uri = None
        if probs is not None:
            roc = write_html(roc_curves(split.test.y, probs, split.class_names), out_dir / "roc.html")
            run.log_artifact(roc, "plots")
            model_uri = log_jbot_model(ckpt, split.train.x[:EXAMPLE_JETS])
    return TrackedResult(run.run_id, model_uri, FinetuneOutcome(metrics, result, ckpt, split.class_names, split))


def tracked_import(checkpoint: Path, state: dict[str, Any], tracking_uri: str,
                   register: str | None = None) -> TrackedResult[str | None]:
    """Log an imported published checkpoint as a model in the store ``tracking_uri`` (tagged with the source
    files' hashes); optionally register it there. The payload is the registered version (or None)."""
    from jbot.config import build_config, with_overrides

    cfg = with_overrides(build_config(state["config"], saved=True), {"tracking.uri": tracking_uri})
    tags = {f"jbot.source.{k}": str(v) for k, v in state["source"].items()}
    name = "import-" + Path(str(state["source"]["backbone"])).name.split(".")[0]
    with tracked_run(cfg, "import", tags=tags, run_name=name) as run:
        run.log_artifact(checkpoint, "checkpoints")
        example = np.zeros((EXAMPLE_JETS, cfg.model.n_particles, cfg.model.n_features), np.float32)
        example[:, :5, 2] = 0.2
        example[:, :5, 3] = 1.0
        model_uri = log_jbot_model(checkpoint, example)
    version = None
    if register:
        from jbot.tracking.registry import register_model

        connect(tracking_uri)
        version = register_model(model_uri, register)
    return TrackedResult(run.run_id, model_uri, version)


def tracked_anomaly(cfg: JbotConfig, source: str, *, out_dir: Path | None = None, experiment: str | None = None,
                    notes: list[str] | None = None, tuned: bool = False, parent_run_id: str | None = None,
                    on_note: Callable[[str], None] | None = None) -> TrackedResult[AnomalyOutcome]:
    """Every anomaly score of a frozen encoder on the ``qg`` preset; report + metrics logged as artifacts.
    ``tuned``: the settings come from an anomaly sweep (the report marks ``anomaly.score`` as tuned). An encoder
    that saw signal jets in training (not the paper's setting) gets a note in the report, passed to ``on_note``
    too, and the tag ``jbot.encoder_saw_signal``."""
    from jbot.anomaly.detect import run_anomaly
    from jbot.anomaly.report import signal_exposure, signal_note, text_table, write_report

    uri = store_uri(cfg)
    loaded = load_from_uri(source, uri)
    cfg = settings_used(cfg, "qg", loaded)
    split = load_split(cfg)
    device = runtime_device(cfg.runtime)
    tags = {**_data_tags(split, str(device)), **provenance(source, uri)}
    notes = list(notes or [])
    exposure = signal_exposure(loaded.state)
    if exposure is not None:
        tags["jbot.encoder_saw_signal"] = str(exposure[0]).lower()
    if exposure is not None and exposure[0]:
        notes.append(signal_note(exposure[1]))
        if on_note is not None:
            on_note(notes[-1])
    with tracked_run(cfg, "anomaly", experiment=experiment, tags=tags, run_name=f"anomaly-{cfg.anomaly.score}",
                     description=f"anomaly scores of the frozen encoder {source} (q, g background)",
                     parent_run_id=parent_run_id) as run:
        _log_split(run, cfg, split)
        result = run_anomaly(loaded.encoder, split, cfg.anomaly, device, n_folds=cfg.evaluate.n_folds)
        run.log_metrics({f"test/{k}": v for k, v in result.metrics.items()})
        prov = {"model": source, **{k.removeprefix("jbot."): v for k, v in tags.items()}, "mlflow_run": run.run_id}
        folder = out_dir or scratch_dir("anomaly-")
        settings = {k: v for k, v in flatten(cfg).items() if k.startswith("anomaly.")}
        paths = write_report(result, folder, prov, notes, settings, cfg.anomaly.score if tuned else None,
                             saw_signal=bool(exposure and exposure[0]))
        for path in paths.values():
            run.log_artifact(path, "report")
    return TrackedResult(run.run_id, None, AnomalyOutcome(result, paths, text_table(result)))
