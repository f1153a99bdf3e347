"""The three studies: fine-tuning, anomaly-score settings, pre-training. Each trial is an MLflow child run of
the study's parent run, tagged with its trial number and final state; the trial stores its run id as the user
attribute ``mlflow_run_id``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from jbot.commands.sweep_kinds import SweepKind
from jbot.config import ConfigError, JbotConfig, with_overrides
from jbot.io import scratch_dir
from jbot.redaction import redact
from jbot.sweeps.study import Sweep, SweepOutcome, claim_once, log_study_summary, run_worker
from jbot.tracking.mlflow import MlflowRun, connect, store_uri


def make_sweep(kind: SweepKind, cfg: JbotConfig, trials: int, space: Path | None, storage: str | None,
               study_name: str | None, experiment: str | None, identity: dict[str, Any]) -> Sweep:
    """The study ``jbot sweep <kind>`` joins: its search space (``space`` or the kind's shipped one, checked against
    the config and the metrics the kind's trials report) and the inputs that name it (``identity``)."""
    from jbot.sweeps.spaces import load_space

    search = load_space(space or f"{kind.name}.yaml")
    search.check_against(cfg)
    kind.check_objective(search.objective, f"search space {space or kind.name}")
    return Sweep(kind.name, search, cfg, trials, {"data": str(cfg.data.dir), **identity},
                 storage or cfg.sweep.storage, study_name or cfg.sweep.study_name, experiment,
                 {f"sweep.{k}": v for k, v in identity.items()})


def _state_tag(sweep: Sweep, trial: optuna.Trial, state: str) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        connect(store_uri(sweep.cfg)).set_tag(run_id, "jbot.trial_state", state)


def tracked_trial(sweep: Sweep, trial: optuna.Trial, body: Callable[[JbotConfig, dict[str, str]], float]) -> float:
    """Suggest a config, run ``body`` (which opens the child run), tag the final state, re-raise failures."""
    overrides = sweep.space.suggest(trial)
    cfg = with_overrides(sweep.cfg, overrides)
    tags = {"jbot.study": sweep.name, "jbot.trial": str(trial.number), "jbot.trial_state": "RUNNING",
            "jbot.objective": sweep.objective}
    try:
        value = body(cfg, tags)
    except optuna.TrialPruned:
        _state_tag(sweep, trial, "PRUNED")
        raise
    except BaseException as exc:
        trial.set_user_attr("error", redact(f"{type(exc).__name__}: {exc}")[:1000])
        _state_tag(sweep, trial, "FAIL")
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or a stop signal: Optuna fails the trial; run it again
            trial.study.enqueue_trial(trial.params, user_attrs={"jbot.retry_of": trial.number})
        raise
    if not np.isfinite(value):
        _state_tag(sweep, trial, "FAIL")
        raise ValueError(f"trial {trial.number}: objective is {value}")
    _state_tag(sweep, trial, "COMPLETE")
    return value


def _reporter(trial: optuna.Trial, key: str, flag: dict[str, bool]) -> Callable[[int, dict[str, float]], bool]:
    def report(step: int, metrics: dict[str, float]) -> bool:
        if key in metrics:
            trial.report(metrics[key], step)
            if trial.should_prune():
                flag["pruned"] = True
                return True
        return False

    return report


# ------------------------------------------------------------------------------------------ fine-tuning


def finetune_objective(sweep: Sweep, source: str, work_dir: Path) -> Callable[[optuna.Trial, str], float]:
    from jbot.commands.finetune import tracked_finetune

    def objective(trial: optuna.Trial, parent: str) -> float:
        def body(cfg: JbotConfig, tags: dict[str, str]) -> float:
            flag = {"pruned": False}
            out_dir = work_dir / f"trial-{trial.number}"
            try:  # the trial's files are in its MLflow run; the local copy goes at once
                res = tracked_finetune(cfg, source, out_dir=out_dir, experiment=sweep.mlflow_experiment,
                                       run_name=f"trial-{trial.number:03d}",
                                       parent_run_id=parent, tags=tags, evaluate_test=False,
                                       on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                                       on_epoch=_reporter(trial, "val/acc", flag))
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            if flag["pruned"]:
                raise optuna.TrialPruned()
            return float(res.payload.metrics[sweep.space.objective])

        return tracked_trial(sweep, trial, body)

    return objective


def finish_finetune(sweep: Sweep, outcome: SweepOutcome, register: str | None) -> dict[str, Any]:
    """When the study reaches its budget: the best trial evaluated on test once (by one worker, whichever claims
    it), the metrics copied to the parent, its classifier logged as a model; optional registration."""
    from jbot.commands.common import EXAMPLE_JETS
    from jbot.commands.finetune import evaluate_stored_run
    from jbot.tracking.models import log_jbot_model
    from jbot.tracking.registry import register_best

    summary = log_study_summary(outcome, store_uri(sweep.cfg), scratch_dir("sweep-"))
    best_run = summary.get("best_run_id")
    if not best_run or outcome.n_complete < sweep.n_trials:
        return summary  # the test set is looked at once, when the study is done
    if not claim_once(outcome.study, f"jbot.test_evaluated.{best_run}"):
        summary["finalized_by_another_worker"] = True
        return summary
    client = connect(store_uri(sweep.cfg))
    if "test/acc" not in client.get_run(best_run).data.metrics:
        metrics, ckpt, split = evaluate_stored_run(with_overrides(sweep.cfg, summary["best_params"]), best_run)
        for key, value in metrics.items():
            client.log_metric(outcome.parent_run_id, key, float(value))
        log_jbot_model(ckpt, split.train.x[:EXAMPLE_JETS], len(split.class_names), classifier=True,
                       run_id=best_run, features=split.features)
        summary["test"] = metrics
    if register:
        reg = register_best(client, sweep.mlflow_experiment, sweep.space.objective, register, "max" if
                            sweep.space.direction == "maximize" else "min", "champion",
                            parent_run_id=outcome.parent_run_id)
        summary["registered"] = f"{reg.name}/{reg.version}"
    client.set_terminated(outcome.parent_run_id, "FINISHED")
    return summary


# --------------------------------------------------------------------------------------- anomaly scores


def anomaly_objective(sweep: Sweep, source: str) -> Callable[[optuna.Trial, str], float]:
    """Embeddings are computed once per worker (the largest reference set the space allows, and the validation
    jets); each trial scores them by the one scoring route (``score_anomalies``) with its settings and evaluates
    the combined AUC on the validation split (labelled W, Z, t: as the paper tuned)."""
    from jbot.anomaly.detect import embed_split, require_mass, score_anomalies
    from jbot.commands.common import load_split, settings_used
    from jbot.tracking.mlflow import tracked_run
    from jbot.tracking.models import load_from_uri
    from jbot.train.device import runtime_device

    loaded = load_from_uri(source, str(sweep.cfg.tracking.uri))
    split = load_split(settings_used(sweep.cfg, "qg", loaded))  # at the encoder's particle count
    require_mass(split, "val", sweep.cfg.anomaly, str(sweep.cfg.data.dir))
    spec = sweep.space.params.get("anomaly.reference_size")
    largest = int(max(spec.high or 0, sweep.cfg.anomaly.reference_size)) if spec is not None \
        else sweep.cfg.anomaly.reference_size
    embedded = embed_split(loaded.encoder, split, "val", largest, sweep.cfg.anomaly.seed,
                           runtime_device(sweep.cfg.runtime))

    def objective(trial: optuna.Trial, parent: str) -> float:
        def body(cfg: JbotConfig, tags: dict[str, str]) -> float:
            cfg = settings_used(cfg, "qg", loaded)  # the params say the split and encoder the trial used
            with tracked_run(cfg, "anomaly", experiment=sweep.mlflow_experiment, parent_run_id=parent,
                             run_name=f"trial-{trial.number:03d}",
                             tags={**loaded.provenance, "jbot.preset": split.preset, **tags}) as run:
                trial.set_user_attr("mlflow_run_id", run.run_id)
                result = score_anomalies(embedded, cfg.anomaly, [cfg.anomaly.score], n_folds=2)
                # the anomaly run's scheme, test/{score}/{signal}/{metric}, less the score: one per trial (a param)
                logged = {f"val/{k.split('/', 1)[1]}": v for k, v in result.metrics.items() if not k.endswith("_std")}
                run.log_metrics(logged)
            return float(logged[sweep.space.objective])

        return tracked_trial(sweep, trial, body)

    return objective


# ----------------------------------------------------------------------------------------- pre-training


ANOMALY_PREFIX = "val/anomaly/"  # a pre-training study on the q+g encoder's validation anomaly metrics


def pretrain_objective(sweep: Sweep, work_dir: Path) -> Callable[[optuna.Trial, str], float]:
    """The validation k-NN accuracy (reported every ``knn_every`` epochs, so trials can be pruned), or with an
    objective ``val/anomaly/<signal>/<metric>`` that metric of ``anomaly.score`` on the validation split after
    q+g pre-training (``data.preset=qg``; measured once, at the end: no pruning)."""
    from jbot.commands.pretrain import tracked_pretrain
    from jbot.train.pretrain import EpochReport

    on_anomaly = sweep.space.objective.startswith(ANOMALY_PREFIX)
    if on_anomaly and sweep.cfg.data.preset != "qg":
        raise ConfigError(f"objective {sweep.space.objective} needs q+g pre-training: --set data.preset=qg")
    scored = _anomaly_scorer(sweep.cfg) if on_anomaly else None

    def objective(trial: optuna.Trial, parent: str) -> float:
        def body(cfg: JbotConfig, tags: dict[str, str]) -> float:
            cfg = with_overrides(cfg, {"pretrain.out_dir": str(work_dir / f"trial-{trial.number}")})
            flag = {"pruned": False}
            report = _reporter(trial, "val/knn_acc", flag)

            def on_epoch(r: EpochReport) -> bool:
                if r.collapsed:  # pruned whatever the objective: a collapsed run learns nothing more
                    trial.set_user_attr("pruned_because", f"representation collapse (epoch {r.epoch})")
                    flag["pruned"] = True
                    return True
                return False if on_anomaly else report(r.epoch, r.metrics)

            res = tracked_pretrain(cfg, experiment=sweep.mlflow_experiment, run_name=f"trial-{trial.number:03d}",
                                   parent_run_id=parent, tags=tags,
                                   on_start=lambda rid: trial.set_user_attr("mlflow_run_id", rid),
                                   on_epoch=on_epoch)
            if flag["pruned"]:
                raise optuna.TrialPruned()
            if scored is not None:
                metrics = scored(cfg, res.payload.checkpoint)
                MlflowRun(connect(store_uri(cfg)), res.run_id).log_metrics(metrics, step=cfg.pretrain.epochs)
                return metrics[sweep.space.objective]
            if res.payload.knn_acc is None:
                raise ValueError("pre-training sweeps need a validation split (data.n_val > 0)")
            return float(res.payload.knn_acc)

        return tracked_trial(sweep, trial, body)

    return objective


def _anomaly_scorer(cfg: JbotConfig) -> Callable[[JbotConfig, Path], dict[str, float]]:
    """A trial's checkpoint -> its ``val/anomaly/...`` metrics; the q+g split is read once per worker."""
    from jbot.anomaly.detect import validation_anomaly
    from jbot.commands.common import load_split
    from jbot.train.checkpoint import load_encoder
    from jbot.train.device import runtime_device

    split = load_split(cfg, "qg")

    def scored(trial_cfg: JbotConfig, checkpoint: Path) -> dict[str, float]:
        metrics = validation_anomaly(load_encoder(checkpoint), split, trial_cfg.anomaly,
                                     runtime_device(trial_cfg.runtime))
        return {ANOMALY_PREFIX + k: v for k, v in metrics.items()}

    return scored


def run_sweep(sweep: Sweep, objective: Callable[[optuna.Trial, str], float],
              finish: Callable[[SweepOutcome], dict[str, Any]] | None = None) -> tuple[SweepOutcome, dict[str, Any]]:
    outcome = run_worker(sweep, objective)
    if finish is not None:
        summary = finish(outcome)
    else:
        summary = log_study_summary(outcome, store_uri(sweep.cfg), scratch_dir("sweep-"))
        if outcome.n_complete >= sweep.n_trials:
            connect(store_uri(sweep.cfg)).set_terminated(
                outcome.parent_run_id, "FINISHED")
    return outcome, summary
