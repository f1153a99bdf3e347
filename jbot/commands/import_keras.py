"""``jbot import-keras``: the authors' published Keras 3 weights as a jbot checkpoint, logged once as an MLflow
model (tagged with the source files' hashes) and optionally registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jbot.commands.common import EXAMPLE_JETS, TrackedResult
from jbot.config import build_config, with_overrides
from jbot.model.keras_import import import_keras
from jbot.tracking.mlflow import connect, tracked_run
from jbot.tracking.models import log_jbot_model
from jbot.train.checkpoint import save_checkpoint


def tracked_import(backbone: Path, classifier: Path | None, out: Path, tracking_uri: str,
                   register: str | None = None) -> tuple[dict[str, Any], TrackedResult[str | None]]:
    """Convert ``backbone`` (and ``classifier``) to the checkpoint ``out``, log it as a model in the store
    ``tracking_uri``; returns the checkpoint's state and the run, whose payload is the registered version (or
    None)."""
    state = import_keras(backbone, classifier)
    save_checkpoint(out, state)
    cfg = with_overrides(build_config(state["config"], saved=True), {"tracking.uri": tracking_uri})
    tags = {f"jbot.source.{k}": str(v) for k, v in state["source"].items()}
    name = "import-" + Path(str(state["source"]["backbone"])).name.split(".")[0]
    with tracked_run(cfg, "import", tags=tags, run_name=name) as run:
        example = np.zeros((EXAMPLE_JETS, cfg.model.n_particles, cfg.model.n_features), np.float32)
        example[:, :5, 2] = 0.2
        example[:, :5, 3] = 1.0
        has_head = "classifier" in state
        model_uri = log_jbot_model(out, example, len(state["class_names"]) if has_head else cfg.model.d_model,
                                   classifier=has_head, features=cfg.model.features)
    version = None
    if register:
        from jbot.tracking.registry import register_model

        connect(tracking_uri)
        version = register_model(model_uri, register)
    return state, TrackedResult(run.run_id, model_uri, version)
