"""What the tracked commands share: the split a command runs on, the params that say what it used, the data's
tags and dataset entry, the metrics JSON and learning curves, and the result every command returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from jbot.config import JbotConfig
from jbot.data.splits import Split, make_split
from jbot.evaluate.table import write_json
from jbot.plots import learning_curves, write_html

if TYPE_CHECKING:
    from jbot.tracking.mlflow import MlflowRun
    from jbot.train.checkpoint import LoadedModel

P = TypeVar("P")

EXAMPLE_JETS = 4  # jets in a logged model's input example
# a training run's description says what MLflow's x axis "Step" is
STEP_IS_EPOCH = ("Charts: Step is the epoch. train/ holds the losses, val/ the validation metrics, diag/ the "
                 "diagnostics (entropies, learning rate, centres), health/ the representation's health, system/ "
                 "the speed and wall time.")
# fine-tuning runs by their start: the same colours in the MLflow UI (tag mlflow.runColor) and in jbot's plots
INIT_COLOURS = {"pretrained": "#1F77B4", "scratch": "#D62728"}


def percent(fraction: float) -> str:
    """0.1 -> "10%", 0.005 -> "0.5%"."""
    return f"{fraction * 100:g}%"


@dataclass
class TrackedResult(Generic[P]):
    """A command's MLflow run: its id, the logged model's URI (if any) and what the command computed."""

    run_id: str
    model_uri: str | None
    payload: P


def settings_used(cfg: JbotConfig, preset: str, loaded: LoadedModel | None = None) -> JbotConfig:
    """``cfg`` as a command really runs it: on the split of ``preset`` and, for a loaded encoder, with that
    encoder's model settings. Its params are then what was used (``data.preset`` = the split's, ``model.*`` = the
    encoder's), never the defaults of a config the command overrode."""
    update: dict[str, Any] = {"data": cfg.data.model_copy(update={"preset": preset})}
    if loaded is not None:
        update["model"] = loaded.encoder.cfg
    return cfg.model_copy(update=update)


def load_split(cfg: JbotConfig, preset: str | None = None, anomaly: bool = False) -> Split:
    """The split a command runs on, read with the model's input schema (``model.n_particles``, ``model.features``);
    ``anomaly``: the preset's anomaly split (its background trained on)."""
    d = cfg.data
    return make_split(d.dir, preset or d.preset, d.n_train, d.n_val, d.n_test, d.seed, cfg.model.n_particles,
                      cfg.model.features, anomaly=anomaly)


def log_split(run: MlflowRun, cfg: JbotConfig, split: Split, n_train: int | None = None) -> None:
    """The split as the run's dataset; ``n_train`` when the training jets are not the split's own (streamed)."""
    run.log_dataset(cfg.data.dir, split.preset, split.fingerprint,
                    {"n_train": len(split.train) if n_train is None else n_train, "n_val": len(split.val),
                     "n_test": len(split.test)})


def data_tags(split: Split, device: str, n_train: int | None = None) -> dict[str, str]:
    return {"jbot.data_fingerprint": split.fingerprint, "jbot.preset": split.preset, "jbot.device": device,
            "jbot.n_train": str(len(split.train) if n_train is None else n_train)}


def log_json_and_curves(run: MlflowRun, out_dir: Path, name: str, metrics: dict[str, float],
                        history: dict[str, list[float]] | None = None,
                        steps: dict[str, list[int]] | None = None) -> None:
    run.log_artifact(write_json(out_dir / f"{name}.json", metrics), "metrics")
    if history:
        fig = learning_curves({k: v for k, v in history.items() if "seconds" not in k and "jets_per_s" not in k},
                              f"{name}: learning curves", steps)
        run.log_artifact(write_html(fig, out_dir / "learning_curves.html"), "plots")
