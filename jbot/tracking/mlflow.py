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
from jbot.io import note_store
from jbot.logs import quiet_mlflow
from jbot.paths import resolve_tracking_uri
from jbot.redaction import is_redacted, public_config, redact

quiet_mlflow()
MAX_PARAM_LENGTH = 6000


MlflowError = mlflow.exceptions.MlflowException  # for the layers that may not import mlflow


class TrackingError(JbotError, RuntimeError):
    """The tracking server or store cannot be used; raised before any training starts."""


def store_uri(cfg: JbotConfig) -> str:
    """The tracking URI of a command's config: resolved once where the command starts
    (``commands.inputs.resolve``) and read here; resolved here only for a library caller's config that names no
    usable store (none, or a checkpoint's redacted one)."""
    uri = cfg.tracking.uri
    return str(uri) if uri and not is_redacted(str(uri)) else resolve_tracking_uri(None, uri)


def _artifact_root(uri: str) -> str | None:
    """Artifact folder beside a SQLite database (absolute); a server decides its own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


# What MLflow can track to (a `+driver` suffix allowed on the database schemes); a plain folder path is a file store
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks", "databricks-uc")
DATABASES = ("postgresql", "mysql", "mssql")
SQLITE_HEADER = b"SQLite format 3\x00"
_checked: set[str] = set()  # stores already checked by this process


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return redact(text.removeprefix("(psycopg.OperationalError) "))[:300]


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, on a store MLflow could not use: an unknown scheme, a server or database that does
    not answer within ``timeout`` seconds, an SQLite file that is not a database or cannot be written. Each store
    is checked once per process."""
    if uri in _checked:
        return
    scheme = _scheme(uri)
    if is_redacted(uri):
        raise TrackingError(f"the tracking URI {uri} holds a redacted password: pass the real one with "
                            "--tracking-uri or MLFLOW_TRACKING_URI")
    if scheme and scheme not in SCHEMES:
        raise TrackingError(f"unsupported tracking URI {redact(uri)}: the scheme {scheme!r} is none of MLflow's "
                            "(sqlite:///PATH, postgresql://..., mysql://..., http(s)://SERVER, or a folder)")
    if scheme in ("http", "https"):
        _check_server(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(Path(uri[len("sqlite:///"):]))
    elif scheme in DATABASES:
        _check_database(uri, timeout)
    _checked.add(uri)


def _check_server(uri: str, timeout: float) -> None:
    """The server's /health, reached as MLflow reaches it: credentials in the URL become a basic-auth header."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri.rstrip("/"))
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, f"{parts.path}/health", "", "")))
    if parts.username is not None:
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach the MLflow tracking server at {redact(uri)} ({redact(str(reason))}). Start it, fix "
            "--tracking-uri / tracking.uri / MLFLOW_TRACKING_URI, or unset them to use the embedded store under "
            "mlruns/.") from None


def _check_sqlite(db: Path) -> None:
    """The folder can be made and written, the file (if any) is an SQLite database that can be read and written."""
    import sqlite3

    folder = db.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"cannot create the MLflow store's folder {folder}: {(exc.strerror or str(exc)).lower()}"
                            "; set JBOT_HOME to a writable working folder or pass --tracking-uri") from None
    if db.exists() and not db.is_file():
        raise TrackingError(f"the MLflow store {db} is not a file")
    if db.is_file() and db.stat().st_size:
        try:
            with db.open("rb") as f:
                header = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise TrackingError(f"the MLflow store {db} cannot be read ({(exc.strerror or str(exc)).lower()})"
                                ) from None
        problem = None if header == SQLITE_HEADER else "is not an SQLite database (another kind of file, or damaged)"
        if problem is None:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                conn.execute("select count(*) from sqlite_master").fetchone()
            except sqlite3.DatabaseError as exc:
                problem = f"is damaged ({exc})"
            finally:
                conn.close()
        if problem:
            raise TrackingError(f"the MLflow store {db} {problem}: move it away to start a new store there, or "
                                "pass --tracking-uri to use another")
    for path in (db, folder) if db.exists() else (folder,):
        if not os.access(path, os.W_OK):
            what = "is read-only" if path == db else "is in a read-only folder"
            raise TrackingError(f"the MLflow store {db} {what} ({folder}): jbot writes a run to it; set JBOT_HOME "
                                "to a writable working folder or pass --tracking-uri")


def _check_database(uri: str, timeout: float) -> None:
    """One connection to the database server, given up after ``timeout`` seconds (MLflow would retry for minutes)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    scheme = _scheme(uri)
    args = {"connect_timeout": max(1, int(timeout))} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=NullPool)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as exc:  # sqlalchemy and the drivers raise many types for a bad or unreachable database
        reason = f"its driver is not installed: {exc}" if isinstance(exc, ImportError) else _first_line(exc)
        raise TrackingError(f"cannot connect to the MLflow tracking database {redact(uri)} ({redact(reason)}). "
                            "Start it, fix --tracking-uri / tracking.uri / MLFLOW_TRACKING_URI, or unset them to "
                            "use the embedded store under mlruns/.") from None


def connect(uri: str, timeout: float = 5.0) -> MlflowClient:
    """Point MLflow at ``uri`` once ``check_store`` has found it usable."""
    check_store(uri, timeout)
    note_store(uri)
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
# experiment has the tag ``mlflow.sharedViewState.KEY`` (JSON of the runs page's state, as its "Share" button
# saves it). jbot's view: parents expanded and every run shown, the run names wide, the headline metrics (with
# their fold std) and what tells runs apart (init, fraction, task, a sweep's searched parameters) as columns, and
# charts of the headline metrics and of each sweep's parameters against its objective (parallel coordinates).
VIEW_KEY = "jbot"
HEADLINE = ("acc", "best_acc", "knn_acc", "linear_acc", "ari", "purity", "nmi", "best_value", "loss", "wall_seconds")
DISTINGUISHING = ("finetune.init", "finetune.fraction", "finetune.task", "data.preset")
MAX_COLUMNS = 18
RUN_NAME_COLUMN = "attributes.`Run Name`"


def _headline(key: str) -> bool:
    """``test/acc``, ``val/knn_acc``, ``sweep/best_value``, ``train/loss``, ``system/wall_seconds``, a claim's
    verdict, and an AUC only when combined (a reproduce parent's per-step copies are not columns)."""
    parts = key.split("/")
    if key.startswith("system/"):  # MLflow's own system metrics stay in their tab; jbot's wall time is a column
        return key == "system/wall_seconds"
    if parts[0] == "claim":  # a reproduction's verdicts (1 holds, 0.5 within error, 0 not), not their differences
        return len(parts) == 2
    return parts[0] in ("test", "val", "sweep", "train") and (
        parts[-1] in HEADLINE or parts[-2:] == ["combined", "auc"])


def runs_view(runs: list[Any]) -> dict[str, Any]:
    """The runs page's state for an experiment holding ``runs`` (its newest, as the UI lists them)."""
    order = {"claim": 0, "test": 1, "val": 2, "sweep": 3, "train": 4, "system": 5}
    keys = {k for r in runs for k in r.data.metrics}
    metrics = sorted({k for k in keys if _headline(k)}, key=lambda k: (order.get(k.split("/")[0], 4), k))
    with_std = [m for k in metrics for m in (k, f"{k}_std") if m == k or m in keys]
    searched = sorted({k.removeprefix("space.") for r in runs for k in r.data.params if k.startswith("space.")})
    telling = [k for k in DISTINGUISHING if len({r.data.params[k] for r in runs if k in r.data.params}) > 1]
    datasets = ["attributes.`Dataset`"] if any(r.inputs.dataset_inputs for r in runs if r.inputs) else []
    columns = (datasets + [f"params.`{k}`" for k in telling] + [f"metrics.`{k}`" for k in with_std]
               + [f"params.`{k}`" for k in searched])[:MAX_COLUMNS]
    parents = sorted({t["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in (t := r.data.tags)})
    section = {"uuid": "jbot-section", "name": "jbot: headline", "display": True, "isReordered": False,
               "deleted": False, "isGenerated": False}
    charts: list[dict[str, Any]] = []
    for r in runs:  # each sweep: its searched parameters against its objective
        objective = r.data.params.get("sweep.objective")
        space = sorted(k.removeprefix("space.") for k in r.data.params if k.startswith("space."))
        if r.data.tags.get("jbot.role") == "sweep-parent" and objective and space:
            charts.append({"uuid": f"jbot-parallel-{r.info.run_id[:8]}", "type": "PARALLEL",
                           "displayName": f"{r.info.run_name}: {', '.join(space)} against {objective}",
                           "selectedParams": space, "selectedMetrics": [objective], "showAllRuns": True})
    for key in [k for k in metrics if k.startswith(("test/", "sweep/"))][:6]:
        charts.append({"uuid": f"jbot-bar-{key}", "type": "BAR", "metricKey": key, "displayName": key,
                       "runsCountToCompare": 100})
    for key in [k for k in ("train/loss", "val/knn_acc", "val/acc") if k in keys]:
        charts.append({"uuid": f"jbot-line-{key}", "type": "LINE", "metricKey": key, "displayName": f"{key} by epoch",
                       "selectedMetricKeys": [key], "xAxisKey": "step", "scaleType": "linear", "lineSmoothness": 0,
                       "runsCountToCompare": 100})
    for chart in charts:
        chart.update(metricSectionId=section["uuid"], deleted=False, isGenerated=False)
    # runsExpanded and columnWidths: MLflow 3.17's UI keeps them per browser and ignores them in a shared view;
    # they are saved for the UIs that read them
    state: dict[str, Any] = {
        "selectedColumns": columns, "columnWidths": {RUN_NAME_COLUMN: 300, **{c: 150 for c in columns}},
        "runsExpanded": {p: True for p in parents}, "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": False}  # a sweep's chart has points once its parent is expanded
    if charts:
        state.update(compareRunCharts=charts, compareRunSections=[section])
    return state


def save_runs_view(client: MlflowClient, experiment_id: str) -> str:
    """Save jbot's runs view of one experiment (from its newest 500 runs), writing the tag only when the view
    changed (opening the UI does not rewrite the store); returns the share key."""
    state = json.dumps(runs_view(client.search_runs([experiment_id], max_results=500)), sort_keys=True)
    tag = f"mlflow.sharedViewState.{VIEW_KEY}"
    if client.get_experiment(experiment_id).tags.get(tag) != state:
        client.set_experiment_tag(experiment_id, tag, state)
    return VIEW_KEY


def experiment_link(base: str, experiment_id: str, view: str | None = VIEW_KEY) -> str:
    """An experiment's runs page, in the model-training (not GenAI) view, with jbot's saved view."""
    return (f"{base}/#/experiments/{experiment_id}/runs?" + (f"viewStateShareKey={view}&" if view else "")
            + "workflowType=machine_learning")


def compare_link(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's side-by-side comparison of ``run_ids`` (params and metrics in one table)."""
    from urllib.parse import quote

    return (f"{base}/#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}"
            "&workflowType=machine_learning")


def registry_link(base: str, name: str | None = None) -> str:
    return f"{base}/#/models" + (f"/{name}" if name else "") + "?workflowType=machine_learning"


def ui_base(uri: str) -> str:
    """Where printed and written run links point: the tracking server itself, else the address `jbot ui` serves."""
    return redact(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI (model-training view)."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


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


# The config sections each command reads: a run's params are these (the whole config is its config.yaml artifact)
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "pretrain": ("data", "augment", "mask", "model", "pretrain", "evaluate", "runtime", "tracking"),
    "finetune": ("data", "model", "finetune", "evaluate", "runtime", "tracking"),
    "probe": ("data", "model", "probe", "evaluate", "runtime", "tracking"),
    "anomaly": ("data", "model", "anomaly", "evaluate", "runtime", "tracking"),
    "import": ("model", "tracking"),
}


def command_params(shown: JbotConfig, command: str) -> dict[str, Any]:
    """The flattened settings of the (redacted) config ``shown`` that ``command`` reads (every section for a command
    not listed)."""
    sections = COMMAND_SECTIONS.get(command)
    return {k: v for k, v in flatten(shown).items() if sections is None or k.split(".", 1)[0] in sections}


@contextlib.contextmanager
def tracked_run(cfg: JbotConfig, command: str, *, experiment: str | None = None,
                run_name: str | None = None, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None, continue_run: str | None = None,
                description: str | None = None) -> Iterator[MlflowRun]:
    """One MLflow run in experiment ``jbot-{command}`` (or ``experiment`` / ``tracking.experiment``).

    Logs the flattened resolved config's sections the command reads as params (``COMMAND_SECTIONS``) and the whole
    config as ``config.yaml``. An exception ends the run FAILED with the
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
    shown = public_config(cfg)  # what is written: the config with every URI's password redacted
    params = {**command_params(shown, command), "tracking.uri": redact(uri)}
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
        run.log_text(to_yaml(shown), "config.yaml")
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            run.log_text(redact("".join(traceback.format_exception(exc))), "error/traceback.txt")
            run.set_tags({"jbot.error": redact(f"{type(exc).__name__}: {exc}")[:5000]})
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")

