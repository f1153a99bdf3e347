"""``jbot finetune``: a tagger fine-tuned from a pre-trained encoder (layer-wise LR decay) or trained from scratch,
as one MLflow run.

The encoder is fetched once (with its provenance), the split read with its model settings, the classifier
trained (``train.finetune``, one metric point per epoch), then once on the restored best weights the test
metrics; the checkpoint is logged once: inside the MLflow model when the run has one (test evaluated), else as
the ``checkpoints`` artifact (a sweep trial, whose best is turned into a model when its study ends).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jbot.commands.common import (
    EXAMPLE_JETS,
    INIT_COLOURS,
    STEP_IS_EPOCH,
    TrackedResult,
    data_tags,
    load_split,
    log_json_and_curves,
    log_split,
    percent,
    settings_used,
)
from jbot.config import JbotConfig
from jbot.data.splits import Split
from jbot.evaluate.bootstrap import PREDICTIONS, jets_hash, save_predictions
from jbot.evaluate.metrics import classification_metrics
from jbot.io import scratch_dir
from jbot.model.heads import ClassifierHead
from jbot.plots import roc_curves, write_html
from jbot.tracking.mlflow import connect, tracked_run
from jbot.tracking.models import load_from_uri, log_jbot_model
from jbot.train.checkpoint import CheckpointError, LoadedModel, save_checkpoint
from jbot.train.device import runtime_device
from jbot.train.finetune import FinetuneResult, classifier_state, finetune, predict_proba


@dataclass
class FinetuneOutcome:
    metrics: dict[str, float]  # val/best_acc, train/*, and test/* unless the test split was left alone
    result: FinetuneResult
    checkpoint: Path
    class_names: tuple[str, ...]
    split: Split


def test_metrics(split: Split, probs: np.ndarray, n_folds: int) -> dict[str, float]:
    """``test/acc``, ``test/auc_<class>`` and their ``_std`` over stratified folds of the test split."""
    return {f"test/{k}": v for k, v in classification_metrics(split.test.y, probs, split.class_names,
                                                              n_folds).items()}


def write_test_predictions(split: Split, probs: np.ndarray, out_dir: Path, kind: str = "classifier") -> Path:
    """The per-jet test outputs (``predictions/test.npz``, float32) a paired bootstrap of two runs reads."""
    return save_predictions(out_dir / PREDICTIONS, split.test.y, probs, fingerprint=split.fingerprint,
                            jets=jets_hash(split.test.jet, split.test.origin), kind=kind)


def same_labels(loaded: LoadedModel | None, split: Split) -> ClassifierHead | None:
    """The loaded classifier head when it was trained on this split's labels (the same names, in order): a head of
    another task with as many classes is not continued."""
    if loaded is None or loaded.classifier is None or tuple(loaded.class_names) != tuple(split.class_names):
        return None
    return loaded.classifier


def tracked_finetune(cfg: JbotConfig, source: str | None, *, out_dir: Path, experiment: str | None = None,
                     parent_run_id: str | None = None,
                     on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
                     tags: dict[str, str] | None = None, on_start: Callable[[str], None] | None = None,
                     evaluate_test: bool = True, run_name: str | None = None) -> TrackedResult[FinetuneOutcome]:
    """Fine-tune ``source`` (or train from scratch when None). With ``evaluate_test`` the test metrics are
    computed once on the restored best weights and the classifier is logged as a model; sweep trials pass False
    (they are selected on validation accuracy only)."""
    loaded = load_from_uri(source, str(cfg.tracking.uri)) if source is not None else None
    cfg = settings_used(cfg, cfg.finetune.task, loaded)
    split = load_split(cfg)
    device = runtime_device(cfg.runtime)
    init = "scratch" if loaded is None else "pretrained"
    all_tags = {**data_tags(split, str(device)), "jbot.from_scratch": str(loaded is None).lower(),
                "mlflow.runColor": INIT_COLOURS[init], **(tags or {}),
                **(loaded.provenance if loaded is not None else {})}
    # the name leads with what tells runs apart in the UI's cut-off name column
    name = run_name or f"{init}-{percent(cfg.finetune.fraction)}-{cfg.finetune.task}"
    origin = "from scratch" if loaded is None else f"fine-tuning {source}"
    with tracked_run(cfg, "finetune", experiment=experiment, tags=all_tags, run_name=name,
                     description=f"{cfg.finetune.task} tagger, {origin}, {percent(cfg.finetune.fraction)} of the "
                                 f"labels. {STEP_IS_EPOCH}",
                     parent_run_id=parent_run_id) as run:
        log_split(run, cfg, split)
        upstream = "" if loaded is None else loaded.provenance.get("jbot.upstream_run", str(source))
        run.log_params({"finetune.init": init, "finetune.source": upstream})
        if on_start is not None:
            on_start(run.run_id)

        def log_epoch(epoch: int, metrics: dict[str, float]) -> bool | None:
            run.log_metrics(metrics, step=epoch)
            return on_epoch(epoch, metrics) if on_epoch is not None else None

        result = finetune(cfg, split, loaded.encoder if loaded else None, on_epoch=log_epoch,
                          head=same_labels(loaded, split), device=device)
        if result.continued_head:
            run.set_tags({"jbot.continued_head": "true"})
        metrics = {"val/best_acc": result.best_val_acc, "train/best_epoch": float(result.best_epoch),
                   "train/n_jets": float(result.n_train), "system/wall_seconds": result.seconds}
        probs = None
        if evaluate_test:
            probs = predict_proba(result.model, split.test.x, device)
            metrics.update(test_metrics(split, probs, cfg.evaluate.n_folds))
        run.log_metrics(metrics)
        ckpt = save_checkpoint(out_dir / "classifier.pt", classifier_state(result, cfg, split.class_names, metrics))
        log_json_and_curves(run, out_dir, "finetune", metrics, result.history)
        model_uri = None
        if probs is None:
            run.log_artifact(ckpt, "checkpoints")
        else:
            run.log_artifact(write_html(roc_curves(split.test.y, probs, split.class_names), out_dir / "roc.html"),
                             "plots")
            run.log_artifact(write_test_predictions(split, probs, out_dir), str(Path(PREDICTIONS).parent))
            model_uri = log_jbot_model(ckpt, split.train.x[:EXAMPLE_JETS], len(split.class_names), classifier=True,
                                       features=split.features)
    return TrackedResult(run.run_id, model_uri, FinetuneOutcome(metrics, result, ckpt, split.class_names, split))


def evaluate_stored_run(cfg: JbotConfig, run_id: str) -> tuple[dict[str, float], Path, Split]:
    """A finished fine-tuning run evaluated on the test split once: its classifier checkpoint is downloaded, run on
    the test jets (``cfg`` = the run's settings), and the metrics logged on that run. Returns the metrics, the
    checkpoint's local path and the split."""
    from jbot.evaluate.embed import infer

    uri = str(cfg.tracking.uri)
    client = connect(uri)
    ckpt = Path(client.download_artifacts(run_id, "checkpoints/classifier.pt", str(scratch_dir("best-"))))
    loaded = load_from_uri(str(ckpt), uri)
    cfg = settings_used(cfg, cfg.finetune.task, loaded)  # the classifier's particle count and features
    split = load_split(cfg)
    probs = infer(loaded.encoder, split.test.x, head=loaded.classifier, device=runtime_device(cfg.runtime)).probs
    if probs is None:
        raise CheckpointError(f"run {run_id}: its checkpoint holds no classifier head")
    metrics = test_metrics(split, probs, cfg.evaluate.n_folds)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.log_artifact(run_id, str(write_test_predictions(split, probs, scratch_dir("predictions-"))),
                        str(Path(PREDICTIONS).parent))
    return metrics, ckpt, split
