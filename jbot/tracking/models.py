"""Encoders and classifiers as MLflow models: a pyfunc model around a jbot checkpoint artifact.

``mlflow.pyfunc.load_model(uri).predict(x)`` with ``x`` (N, P, 4) float32 (P: the model's ``model.n_particles``)
returns the [CLS] embeddings (N, D), or class probabilities (N, C) for a classifier; ``load_from_uri`` restores
jbot's own ``JetEncoder`` (and head) from the same artifact, for any ``runs:/``, ``models:/name/version``,
``models:/name@alias`` URI, run id or local path, and names what it downloaded (``LoadedModel.provenance``).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import Schema, TensorSpec

import jbot
from jbot.data.features import PAPER_FEATURES, layout
from jbot.evaluate.embed import infer, schema_mismatch
from jbot.io import scratch_dir
from jbot.paths import RUN_ID, is_model_source
from jbot.train.checkpoint import CheckpointError, LoadedModel, load_model

CHECKPOINT_KEY = "checkpoint"


class JbotPyfunc(PythonModel):
    """predict(x (N, P, F)) -> [CLS] (N, D), or probabilities (N, C) when the checkpoint holds a classifier."""

    def load_context(self, context: Any) -> None:
        self.model = load_model(context.artifacts[CHECKPOINT_KEY])

    # np.ndarray: a hint MLflow derives no schema from (the logged signature is the schema)
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        enc = self.model.encoder
        try:
            x = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected float jets (N, P, {enc.cfg.n_features}), got {type(model_input).__name__} "
                             f"that is not a float array ({str(exc)[:200]})") from None
        if x.ndim != 3:
            raise ValueError(f"expected jets (N, P, {enc.cfg.n_features}), got shape {x.shape}")
        if (mismatch := schema_mismatch("model input", x, enc.cfg.features)) is not None:
            raise ValueError(mismatch)
        out = infer(enc, x, head=self.model.classifier)
        return out.probs if out.probs is not None else out.cls


def log_jbot_model(checkpoint: str | Path, example: np.ndarray, n_out: int, classifier: bool,
                   run_id: str | None = None, features: tuple[str, ...] = PAPER_FEATURES) -> str:
    """Log ``checkpoint`` as a pyfunc model of the active run, or of the finished run ``run_id`` (its one upload:
    the model holds the file); returns the model URI. ``n_out``: the output width (D for an encoder, C for a
    classifier), known to the caller that wrote the checkpoint; ``features``: the input schema (``model.features``),
    recorded as the model's metadata and the tag ``jbot.features`` (its columns, ``valid`` included)."""
    if run_id is not None:
        with mlflow.start_run(run_id=run_id):
            return log_jbot_model(checkpoint, example, n_out, classifier, features=features)
    _, n_particles, n_features = example.shape
    columns = layout(features)
    if n_features != len(columns):
        raise ValueError(f"the input example has {n_features} columns, the schema {len(columns)} ({columns})")
    # the output schema only: MLflow's check of an input schema rejects float64 jets with a dump of the whole
    # array; predict checks the input itself, in one line, and takes any float dtype (the input's layout is in
    # the metadata and the model card)
    signature = ModelSignature(outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_out))]))
    name = "jbot-classifier" if classifier else "jbot-encoder"
    with _quiet("mlflow.pyfunc"):
        info = _log_pyfunc(checkpoint, signature, example, name, {
            "jbot.features": ",".join(columns), "jbot.n_particles": str(n_particles), "jbot.version": jbot.__version__,
            "jbot.input": f"float jets (N, {n_particles}, {n_features}): {', '.join(columns)}",
            "jbot.output": f"float32 (N, {n_out}): "
                           + ("class probabilities" if classifier else "the [CLS] embedding")})
    mlflow.set_tags({"jbot.model_uri": info.model_uri, "jbot.features": ",".join(columns)})
    return info.model_uri


@contextlib.contextmanager
def _quiet(logger: str):  # type: ignore[no-untyped-def]
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def model_requirements() -> list[str]:
    """What the logged model needs installed: torch and mlflow (numpy, pydantic and PyYAML come with mlflow). jbot
    itself travels with the model as code (``code_paths``): the distribution is not needed to load it."""
    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]


def _package_copy() -> Path:
    """This jbot package, without compiled files, in a scratch folder: the model's code."""
    import shutil

    dest = scratch_dir("model-code-") / "jbot"
    shutil.copytree(Path(jbot.__file__).resolve().parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _log_pyfunc(checkpoint: str | Path, signature: ModelSignature, example: np.ndarray, name: str,
                metadata: dict[str, str]) -> Any:
    return mlflow.pyfunc.log_model(
        name=name, python_model=JbotPyfunc(), artifacts={CHECKPOINT_KEY: str(checkpoint)},
        signature=signature, input_example=example.astype(np.float32), metadata=metadata,
        code_paths=[str(_package_copy())], pip_requirements=model_requirements(),
    )


def _find_checkpoint(folder: Path) -> Path:
    found = sorted(folder.rglob("*.pt"))
    if not found:
        raise CheckpointError(f"no jbot checkpoint inside the downloaded model at {folder}")
    return found[0]


def _pinned(client: Any, source: str) -> tuple[str, dict[str, str]]:
    """``source`` resolved once: the artifact URI to download (a registry alias pinned to the version it points at
    now) and the provenance tags naming that run and version, so what is scored and what is tagged cannot differ
    even if the alias moves meanwhile."""
    tags = {"jbot.source": source}
    if RUN_ID.match(source):
        try:
            run = client.get_run(source)
        except mlflow.exceptions.MlflowException as exc:
            raise CheckpointError(f"run {source} not found in the tracking store ({exc})") from None
        uri = run.data.tags.get("jbot.model_uri")
        if uri is None:
            raise CheckpointError(f"run {source} logged no jbot model")
        return uri, {**tags, "jbot.upstream_run": source}
    if source.startswith("runs:/"):
        return source, {**tags, "jbot.upstream_run": source[len("runs:/"):].split("/")[0]}
    ref = source[len("models:/"):]
    if source.startswith("models:/") and ("@" in ref or "/" in ref):
        name, _, rest = ref.partition("@") if "@" in ref else ref.partition("/")
        try:
            mv = (client.get_model_version_by_alias(name, rest) if "@" in ref
                  else client.get_model_version(name, rest))
        except mlflow.exceptions.MlflowException as exc:
            raise CheckpointError(f"{source}: not in the model registry ({exc.message})") from None
        return f"models:/{mv.name}/{mv.version}", {**tags, "jbot.upstream_run": mv.run_id or "",
                                                    "jbot.upstream_model": f"{mv.name}/{mv.version}"}
    return source, tags


def fetch_checkpoint(source: str, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    """A local checkpoint for a path, run id, ``runs:/`` or ``models:/`` URI (downloaded once to a temp dir from the
    store ``tracking_uri``, the command's resolved URI) and the provenance tags of what was downloaded."""
    from jbot.tracking.mlflow import connect

    path = Path(source)
    if path.is_file():
        return path, {"jbot.source": source}
    if not is_model_source(source):
        raise CheckpointError(f"{source}: no such checkpoint file, run id or runs:/ / models:/ URI")
    client = connect(tracking_uri)
    uri, tags = _pinned(client, source)
    dest = scratch_dir("model-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                    tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise CheckpointError(f"{source}: cannot be loaded from the tracking store ({exc.message})") from None
    return _find_checkpoint(Path(local)), tags


def resolve_checkpoint(source: str, tracking_uri: str) -> Path:
    return fetch_checkpoint(source, tracking_uri)[0]


def load_from_uri(source: str, tracking_uri: str) -> LoadedModel:
    """The encoder (and head) of ``source``, with ``provenance``: the tags naming the run and registered version
    it was downloaded from (resolved together with the download, once)."""
    path, tags = fetch_checkpoint(source, tracking_uri)
    loaded = load_model(path)
    loaded.provenance.update(tags)
    return loaded
