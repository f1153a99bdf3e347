"""MLflow runs: the tracking target, one run per command, params/tags/metrics/artifacts, failure states.

The tracking target is resolved once per command (``jbot.paths.resolve_tracking_uri``: ``--tracking-uri``, config
``tracking.uri``, env ``MLFLOW_TRACKING_URI``, else the embedded SQLite store under ``mlruns/`` in the working
folder) and stored in the config as ``tracking.uri``; everything below reads it from there (``store_uri``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import jbot
from jbot.config import JbotConfig, flatten, to_yaml
from jbot.errors import JbotError
from jbot.logs import quiet_mlflow
from jbot.paths import redact, resolve_tracking_uri

quiet_mlflow()
MAX_PARAM_LENGTH = 6000


class TrackingError(JbotError, RuntimeError):
    """The tracking server or store cannot be used; raised before any training starts."""


def store_uri(cfg: JbotConfig) -> str:
    """The tracking URI of a command's config (already resolved by the CLI; resolved here for library callers)."""
    return resolve_tracking_uri(None, cfg.tracking.uri)


def _artifact_root(uri: str) -> str | None:
    """Artifact folder beside a SQLite database (absolute); a server decides its own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def connect(uri: str, timeout: float = 5.0) -> MlflowClient:
    """Point MLflow at ``uri``; an http(s) server must answer its health check within ``timeout`` seconds."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}). Start it, fix --tracking-uri"
                " / tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the embedded store under mlruns/."
            ) from None
    elif uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# The MLflow UI opens an experiment of this kind on its runs table (not on GenAI traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        mark_model_training(client, exp)
        return exp.experiment_id
    root = _artifact_root(uri)
    return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None, tags=EXPERIMENT_KIND)


def mark_model_training(client: MlflowClient, exp: Any) -> None:
    """Tag an experiment made before jbot set its kind (the UI then opens it on the runs table)."""
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)


def jbot_experiments(client: MlflowClient) -> list[Any]:
    """The store's jbot experiments (name ``jbot-*``), marked as model-training experiments, by name."""
    found = [e for e in client.search_experiments(max_results=1000) if e.name.startswith("jbot-")]
    for exp in found:
        mark_model_training(client, exp)
    return sorted(found, key=lambda e: e.name)


# The MLflow UI opens an experiment with a saved view when its link carries ``?viewStateShareKey=KEY`` and the
# experiment has the tag ``mlflow.sharedViewState.KEY`` (JSON of the runs table's state, as its "Share" button
# saves it). jbot saves one with the headline metrics (and a sweep's searched parameters) as columns.
VIEW_KEY = "jbot"
HEADLINE = ("acc", "best_acc", "knn_acc", "linear_acc", "ari", "purity", "best_value", "loss", "wall_seconds")
MAX_COLUMNS = 14


def _headline(key: str) -> bool:
    """``test/acc``, ``val/knn_acc``, ``sweep/best_value``, ``train/loss``, and an AUC only when combined."""
    parts = key.split("/")
    return not key.startswith("system/") and (parts[-1] in HEADLINE or parts[-2:] == ["combined", "auc"])


def save_runs_view(client: MlflowClient, experiment_id: str) -> str:
    """Save the runs-table view of one experiment (columns from its newest 500 runs); returns the share key."""
    runs = client.search_runs([experiment_id], max_results=500)
    order = {"test": 0, "val": 1, "sweep": 2, "train": 3}
    metrics = sorted({k for r in runs for k in r.data.metrics if _headline(k)},
                     key=lambda k: (order.get(k.split("/")[0], 4), k))
    searched = sorted({k.removeprefix("space.") for r in runs for k in r.data.params if k.startswith("space.")})
    datasets = ["attributes.`Dataset`"] if any(r.inputs.dataset_inputs for r in runs if r.inputs) else []
    columns = datasets + [f"metrics.`{k}`" for k in metrics] + [f"params.`{k}`" for k in searched]
    state = {"selectedColumns": columns[:MAX_COLUMNS]}
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(state))
    return VIEW_KEY


def git_commit() -> str:
    """The commit of the jbot source checkout this package runs from; "unknown" for an installed package."""
    checkout = Path(jbot.__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowRun:
    """The Tracker of one MLflow run (params, metrics with steps, artifacts, tags)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100], synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start:start + 500], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_dataset(self, folder: str | Path, preset: str, fingerprint: str, sizes: dict[str, int]) -> None:
        """The run's data as an MLflow dataset input (the UI's Dataset column): folder, preset, fingerprint."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(Path(folder).resolve()))
        dataset = MetaDataset(source=source, name=f"{Path(folder).name} ({preset})",  # type: ignore[abstract]
                              digest=fingerprint[:16])
        tags = [InputTag("mlflow.data.context", "train"), *(InputTag(k, str(v)) for k, v in sizes.items())]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def reap_stale_runs(client: MlflowClient, exp_id: str) -> list[str]:
    """Runs of this experiment left RUNNING by a jbot process of this machine that no longer exists (killed with
    SIGKILL, or the machine lost power) are ended KILLED; returns their ids."""
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([exp_id], "attributes.status = 'RUNNING'", max_results=200):
        tags = run.data.tags
        pid = tags.get("jbot.pid", "")
        if tags.get("jbot.host") == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "jbot.error", f"process {pid} on {host} ended without closing the run")
            client.set_terminated(run.info.run_id, "KILLED")
            stale.append(run.info.run_id)
    return stale


def _continuable(client: MlflowClient, run_id: str | None, exp_id: str) -> Any:
    """The run to continue, if it is still in this store and experiment (else None: a new run)."""
    if run_id is None:
        return None
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # another store, or deleted
    return run if run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active" else None


@contextlib.contextmanager
def tracked_run(cfg: JbotConfig, command: str, *, experiment: str | None = None,
                run_name: str | None = None, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, continue_run: str | None = None,
                description: str | None = None) -> Iterator[MlflowRun]:
    """One MLflow run in experiment ``jbot-{command}`` (or ``experiment`` / ``tracking.experiment``).

    Logs the flattened resolved config as params and ``config.yaml``. An exception ends the run FAILED with the
    traceback as the artifact ``error/traceback.txt``; Ctrl-C ends it KILLED (the caller saved its checkpoint).
    ``continue_run``: a run of an earlier, interrupted process to continue (a resumed pre-training) when it is
    still in this store and experiment; its params stay, fields changed since are listed in ``jbot.resume_changed``.
    Runs left RUNNING by dead jbot processes of this machine are ended KILLED first.
    """
    uri = store_uri(cfg)
    client = connect(uri)
    exp_id = experiment_id(client, experiment or cfg.tracking.experiment or f"jbot-{command}", uri)
    reap_stale_runs(client, exp_id)
    commit = git_commit()
    all_tags = {"jbot.version": jbot.__version__, "jbot.git_commit": commit, "jbot.command": command,
                **({"mlflow.source.git.commit": commit} if commit != "unknown" else {}),
                "jbot.host": socket.gethostname(), "jbot.pid": str(os.getpid()), **(tags or {})}
    if description:  # the run's description in the UI
        all_tags["mlflow.note.content"] = description
    if parent_run_id:  # the tag MLflow nests by; works across processes (the parent need not be active here)
        all_tags["mlflow.parentRunId"] = parent_run_id
    params = {**flatten(cfg), "tracking.uri": redact(uri)}
    continued = _continuable(client, continue_run, exp_id)
    if continued is not None:
        logged = continued.data.params
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)[:MAX_PARAM_LENGTH]}
        params = {k: v for k, v in params.items() if k not in logged}
        all_tags["jbot.resume_changed"] = json.dumps(changed, default=str)[:5000]
        active = mlflow.start_run(run_id=continued.info.run_id, tags=all_tags,
                                  log_system_metrics=cfg.tracking.log_system_metrics)
    else:
        active = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=all_tags,
                                  nested=mlflow.active_run() is not None,
                                  log_system_metrics=cfg.tracking.log_system_metrics)
    run = MlflowRun(client, active.info.run_id)
    try:
        run.log_params(params)
        run.log_text(to_yaml(cfg), "config.yaml")
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            run.log_text("".join(traceback.format_exception(exc)), "error/traceback.txt")
            run.set_tags({"jbot.error": f"{type(exc).__name__}: {exc}"[:5000]})
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")

