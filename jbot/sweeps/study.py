"""Optuna studies: storage, sampler and pruner, one MLflow parent run per study, child runs per trial.

Storage: default ``sqlite:///<working folder>/sweeps/optuna.db`` (``jbot.paths``; separate from MLflow's
database: both own an ``alembic_version`` table); ``postgresql://...`` (or any SQLAlchemy URL) for many workers,
with heartbeats so a killed worker's trial is failed and re-queued; or a journal file (``*.log`` /
``journal:PATH``). ``--trials`` is a total of COMPLETE trials across all workers; trials already running when the
budget is reached still finish (overshoot at most workers - 1). Re-running the same command resumes the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from jbot import signals
from jbot.config import JbotConfig, flatten
from jbot.errors import JbotError
from jbot.logs import quiet_optuna
from jbot.paths import default_optuna_storage
from jbot.redaction import public_config, redact
from jbot.sweeps.spaces import SearchSpace
from jbot.tracking.mlflow import (
    MlflowError,
    MlflowRun,
    connect,
    experiment_id,
    git_commit,
    run_link,
    store_uri,
    ui_base,
)

quiet_optuna()
HEARTBEAT_SECONDS = 2
GRACE_SECONDS = 6
PARENT_ATTR = "mlflow_parent_run_id"
PARENT_CLAIM = "jbot.parent_claim."  # + n: the n-th claim to create the parent run (claim_once: one winner each)
FAILED_CLAIM_ATTR = "mlflow_parent_failed_claim"  # the claim whose creator failed: the next worker takes over
PARENT_WAIT_SECONDS = 30
FEW_TRIALS = 20  # below this many complete trials, importances get a caveat in their title
_CREATED_HERE: set[str] = set()  # parent runs this process created (it ends them when it is stopped)
# A worker needs two connections at once (its trials and the heartbeat thread): many workers on one database
# server must not exhaust its client slots.
SERVER_POOL = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2}


class SweepError(JbotError, RuntimeError):
    pass


def default_storage() -> str:
    url = default_optuna_storage()
    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def make_storage(url: str | None, attempts: int = 5) -> Any:
    """Open (and on first use create) the storage. Workers started together on a fresh database race to create
    Optuna's tables: the loser sees a duplicate-object error and retries once the winner is done."""
    url = url or default_storage()
    if url.startswith("journal:") or url.endswith(".log"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                                  engine_kwargs=None if url.startswith("sqlite") else SERVER_POOL)
        except Exception as exc:  # sqlalchemy raises many types for a bad or unreachable database
            racing = "already exists" in str(exc) or "UniqueViolation" in str(exc)
            if racing and attempt + 1 < attempts:
                time.sleep(1.0 + attempt)
                continue
            raise SweepError(f"cannot open the Optuna storage {redact(url)}: {type(exc).__name__}: {exc}") from None
    raise AssertionError("unreachable")


@dataclass
class Sweep:
    """Everything a worker needs; ``objective(trial, parent_run_id)`` returns the value to optimise."""

    kind: str
    space: SearchSpace
    cfg: JbotConfig
    n_trials: int
    identity: dict[str, Any]
    storage: str | None = None
    study_name: str | None = None
    experiment: str | None = None
    extra_params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.study_name:
            return self.study_name
        blob = json.dumps({"kind": self.kind, **self.identity, "space": self.space.model_dump(mode="json")},
                          sort_keys=True, default=str)
        # readable first (the kind, the data folder, the objective), unique by the hash of every input
        data = Path(str(self.identity.get("data", ""))).name
        words = "-".join(w for w in (self.kind, data, self.space.objective) if w)
        readable = re.sub(r"[^A-Za-z0-9]+", "-", words).strip("-").lower()
        return f"jbot-{readable}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"

    @property
    def objective(self) -> str:
        """What the study optimises, in words: ``val/combined/auc, maximize``."""
        return f"{self.space.objective}, {self.space.direction}"

    @property
    def mlflow_experiment(self) -> str:
        return self.experiment or f"jbot-sweep-{self.kind}"


def _sampler(sweep: Sweep, first_worker: bool) -> optuna.samplers.BaseSampler:
    """Seeded by ``sweep.seed``; every worker but the one that created the study adds its process id, on any
    storage, or workers started together would propose the same start-up trials."""
    seed = sweep.cfg.sweep.seed + (0 if first_worker else os.getpid())
    if sweep.cfg.sweep.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.n_trials // 3)))


def _pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.cfg.sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=sweep.cfg.sweep.pruner_startup_trials,
                                       n_warmup_steps=sweep.cfg.sweep.pruner_warmup_steps)


def _create_parent(sweep: Sweep, study: optuna.Study, claim: int) -> str:
    uri = store_uri(sweep.cfg)
    run_id = None
    try:
        client = connect(uri)
        exp = experiment_id(client, sweep.mlflow_experiment, uri)
        run_id = client.create_run(exp, run_name=sweep.name, tags={
            "jbot.study": sweep.name, "jbot.sweep_kind": sweep.kind, "jbot.git_commit": git_commit(),
            "jbot.role": "sweep-parent", "jbot.objective": sweep.objective,
            "mlflow.note.content": f"Optuna study {sweep.name}: {sweep.objective} over {sweep.n_trials} trials "
                                   f"({', '.join(sweep.space.params)})"}).info.run_id
        # the base config without the searched fields (they get the best trial's values when the study ends), then
        # the study's own settings: its real name, budget and storage
        params: dict[str, Any] = {k: v for k, v in flatten(public_config(sweep.cfg)).items()
                                  if k not in sweep.space.params}
        params.update({"sweep.study_name": sweep.name, "sweep.storage": redact(sweep.storage or default_storage()),
                       "sweep.n_trials": sweep.n_trials, "sweep.objective": sweep.space.objective,
                       "sweep.direction": sweep.space.direction, **sweep.extra_params,
                       "tracking.uri": redact(uri)})
        params.update({f"space.{k}": json.dumps(v.model_dump(mode="json", exclude_none=True))
                       for k, v in sweep.space.params.items()})
        MlflowRun(client, run_id).log_params(params)
        study.set_user_attr(PARENT_ATTR, run_id)
        _save_note(study, sweep, ui_base(uri), client.get_experiment_by_name(sweep.mlflow_experiment), run_id)
        _CREATED_HERE.add(run_id)
    except BaseException:
        with contextlib.suppress(Exception):
            study.set_user_attr(FAILED_CLAIM_ATTR, claim)  # the next worker makes a parent at once
            if run_id is not None:
                client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def _save_note(study: optuna.Study, sweep: Sweep, base: str, exp: Any, parent: str) -> None:
    """The study's note in optuna-dashboard: its objective, data, inputs and MLflow parent run."""
    from optuna_dashboard import save_note

    inputs = "\n".join(f"- {k}: `{redact(str(v))}`" for k, v in sweep.identity.items())
    link = run_link(base, exp.experiment_id, parent) if exp is not None else parent
    save_note(study, f"# {sweep.name}\n\n**Objective**: {sweep.objective} ({sweep.kind} sweep, {sweep.n_trials} "
                     f"trials)\n\n**Searched**: {', '.join(sweep.space.params)}\n\n{inputs}\n\n"
                     f"**MLflow parent run**: [{parent}]({link})\n")


def open_study(sweep: Sweep) -> tuple[optuna.Study, str]:
    """Create the study (and its MLflow parent run) or join it; returns (study, parent run id).

    The tracking store is reached first, so a start that cannot log creates no study. A study whose parent run
    was never made (its first worker failed or was killed in between) gets one from the next worker.
    """
    connect(store_uri(sweep.cfg))  # an unreachable server fails here, before anything is stored
    storage = make_storage(sweep.storage)
    pruner = _pruner(sweep)
    try:
        study = optuna.create_study(study_name=sweep.name, direction=sweep.space.direction, load_if_exists=False,
                                    storage=storage, sampler=_sampler(sweep, first_worker=True), pruner=pruner)
        with warnings.catch_warnings():  # experimental in Optuna 5
            warnings.simplefilter("ignore")
            study.set_metric_names([sweep.space.objective])  # optuna-dashboard names the objective
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=_sampler(sweep, False),
                                  pruner=pruner)
    if study.direction.name.lower() != sweep.space.direction:
        raise SweepError(f"study {sweep.name} optimises {study.direction.name.lower()}, the space says "
                         f"{sweep.space.direction}; pick another --study-name")
    while True:
        attrs = study.user_attrs
        if attrs.get(PARENT_ATTR):
            return study, str(attrs[PARENT_ATTR])
        claims = _parent_claims(study)
        last = max(claims, default=-1)
        # the first worker claims at once; a later claim only when the last claimant failed or went silent
        stale = last < 0 or attrs.get(FAILED_CLAIM_ATTR) == last or time.time() - claims[last] > PARENT_WAIT_SECONDS
        if stale and claim_once(study, f"{PARENT_CLAIM}{last + 1}"):
            return study, _create_parent(sweep, study, last + 1)
        time.sleep(0.5)  # another worker is creating the parent run


def _parent_claims(study: optuna.Study) -> dict[int, float]:
    """{claim number: when it was made} from the study's system attributes."""
    out = {}
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if key.startswith(PARENT_CLAIM):
            stamp = json.loads(value) if isinstance(value, str) else value
            out[int(key[len(PARENT_CLAIM):])] = float(stamp["time"])
    return out


def claim_once(study: optuna.Study, key: str) -> bool:
    """True for exactly one caller per study and ``key``, across processes and machines. On a database the claim
    is one INSERT of a study system attribute, which the table's (study, key) unique constraint lets succeed once;
    a journal-file storage has no such constraint and can only check, then set."""
    storage: Any = study._storage
    if isinstance(getattr(storage, "_backend", None), RDBStorage):  # Optuna wraps database storages in a cache
        storage = storage._backend
    study_id = storage.get_study_id_from_name(study.study_name)
    stamp = json.dumps({"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb.models import StudySystemAttributeModel
        from sqlalchemy.exc import IntegrityError

        try:
            with storage.engine.begin() as conn:
                conn.execute(StudySystemAttributeModel.__table__.insert().values(
                    study_id=study_id, key=key, value_json=json.dumps(stamp)))
        except IntegrityError:
            return False
        return True
    if key in storage.get_study_system_attrs(study_id):
        return False
    storage.set_study_system_attr(study_id, key, stamp)
    return True


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _give_up_after_failures(limit: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) >= limit:
            study.stop()

    return callback


@dataclass
class SweepOutcome:
    study: optuna.Study
    parent_run_id: str
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    n_trials: int = 0  # the budget of COMPLETE trials


def run_worker(sweep: Sweep, objective: Callable[[optuna.Trial, str], float]) -> SweepOutcome:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (counted across all workers)."""
    study, parent = open_study(sweep)
    start = time.perf_counter()
    if completed(study) < sweep.n_trials:
        try:
            study.optimize(lambda trial: objective(trial, parent), n_trials=None, catch=(Exception,),
                           gc_after_trial=True,
                           callbacks=[MaxTrialsCallback(sweep.n_trials, states=(TrialState.COMPLETE,)),
                                      _give_up_after_failures(max(5, sweep.n_trials))])
        except KeyboardInterrupt as exc:  # the running trial is FAIL in Optuna (and queued again), KILLED in MLflow
            if parent in _CREATED_HERE:  # the parent run this worker made ends with it
                with contextlib.suppress(Exception):
                    client = connect(store_uri(sweep.cfg))
                    client.set_tag(parent, "jbot.stopped", signals.describe(exc))
                    client.set_terminated(parent, "KILLED")
            raise
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return SweepOutcome(study, parent, states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED),
                        states.count(TrialState.FAIL), time.perf_counter() - start, sweep.n_trials)


def _set_tag(client: Any, run_id: str, key: str, value: str) -> None:
    """A tag of the study's parent run, which every worker writes when it ends: two workers writing the same new
    key at once can collide in the store (a duplicate key on PostgreSQL); the second write then simply repeats."""
    try:
        client.set_tag(run_id, key, value)
    except MlflowError as exc:
        if "already exists" not in str(exc) and "UNIQUE" not in str(exc).upper():
            raise
        client.set_tag(run_id, key, value)


def log_study_summary(outcome: SweepOutcome, tracking_uri: str, out_dir: Path) -> dict[str, Any]:
    """Best value and params and Optuna's plotly figures (self-contained HTML) on the parent run."""
    from optuna import visualization as vis

    from jbot.plots import write_html

    study = outcome.study
    client = connect(tracking_uri)
    run_id = outcome.parent_run_id
    summary: dict[str, Any] = {"n_complete": outcome.n_complete, "n_pruned": outcome.n_pruned,
                               "n_failed": outcome.n_failed}
    if outcome.n_complete:
        best = study.best_trial
        summary.update({"best_value": best.value, "best_trial": best.number, "best_params": best.params,
                        "best_run_id": best.user_attrs.get("mlflow_run_id")})
        client.log_metric(run_id, "sweep/best_value", float(best.value or 0.0))
        _set_tag(client, run_id, "jbot.best_trial", str(best.number))
        _set_tag(client, run_id, "jbot.best_params", json.dumps(best.params)[:5000])
        for key, value in best.params.items():
            _set_tag(client, run_id, f"best.{key}", str(value))
            if outcome.n_complete >= outcome.n_trials:  # the searched fields' params: the best trial's values
                with contextlib.suppress(MlflowError):  # kept from an earlier, shorter study
                    client.log_param(run_id, key, str(value))
        if summary["best_run_id"]:
            _set_tag(client, run_id, "jbot.best_run_id", summary["best_run_id"])
    for key in ("n_complete", "n_pruned", "n_failed"):
        client.log_metric(run_id, f"sweep/{key}", float(summary[key]))
    figures: dict[str, Callable[..., Any]] = {
        "optimization_history": vis.plot_optimization_history, "parallel_coordinate":
               vis.plot_parallel_coordinate, "slice": vis.plot_slice, "param_importances": vis.plot_param_importances}
    with warnings.catch_warnings():  # experimental in Optuna 5
        warnings.simplefilter("ignore")
        objective = (study.metric_names or ["objective"])[0]
    for name, make in figures.items():
        try:
            fig = make(study, target_name=objective)  # the axis names the objective, not "Objective Value"
            if name == "param_importances" and outcome.n_complete < FEW_TRIALS:
                fig.update_layout(title=f"Hyperparameter importances from only {outcome.n_complete} complete trials "
                                        f"(rough below ~{FEW_TRIALS})")
            client.log_artifact(run_id, str(write_html(fig, out_dir / f"{name}.html")), "plots")
        except (ValueError, RuntimeError, ZeroDivisionError):
            pass  # too few complete trials for this figure
    return summary
