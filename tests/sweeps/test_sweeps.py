"""Optuna sweeps against real storages: SQLite, and PostgreSQL (127.0.0.1:5432) with a real `mlflow server`
on PostgreSQL and concurrent worker processes. Each test creates and drops its own Optuna database; the module's
MLflow server has its own, dropped when the module is done."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.sweeps.spaces import load_space
from tests.conftest import (
    PROJECT_ROOT,
    NewStore,
    running_mlflow_server,
    temporary_database,
    tiny_checkpoint,
    write_fake_folder,
)

runner = CliRunner()
FAST = ["data.n_train=400", "data.n_val=100", "data.n_test=200", "finetune.epochs=2", "finetune.batch_size=128",
        "tracking.log_system_metrics=false"]
JBOT = str(Path(sys.executable).parent / "jbot")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sweep-inputs")
    return write_fake_folder(root / "jets", 250), tiny_checkpoint(root / "encoder.pt", 0)


def _args(data: Path, encoder: Path, trials: int, storage: str, study: str, tracking: str) -> list[str]:
    sets = [a for item in FAST for a in ("--set", item)]
    return ["sweep", "finetune", "--model", str(encoder), "--trials", str(trials), "--data", str(data),
            "--storage", storage, "--study-name", study, "--tracking-uri", tracking, *sets]


def _children(client: MlflowClient, parent: str) -> list:
    exp = client.get_experiment_by_name("jbot-sweep-finetune")
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)


def test_spaces_are_validated(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    for name in ("finetune", "anomaly", "pretrain", "pretrain-anomaly"):
        load_space(f"{name}.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: val/acc\nparams:\n  finetune.lr: {type: float, low: 1.0, high: 0.1}\n")
    with pytest.raises(ValueError, match="low <= high"):
        load_space(bad)
    bad.write_text("objective: val/acc\nparams:\n  finetune.lrr: {type: float, low: 0.1, high: 1.0}\n")
    data, encoder = inputs
    result = runner.invoke(app, ["sweep", "finetune", "--model", str(encoder), "--data", str(data), "--space", str(bad),
                                 "--trials", "1"])
    assert result.exit_code == 2 and "finetune.lrr" in result.output and "unknown field" in result.output


def test_resume_and_failed_trial_sqlite(inputs: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, new_store: NewStore) -> None:
    data, encoder = inputs
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = new_store(tmp_path / "mlruns")
    import torch

    import jbot.train.finetune as ft

    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 1 else loss  # the first trial diverges

    monkeypatch.setattr(ft.F, "cross_entropy", poisoned)
    first = runner.invoke(app, _args(data, encoder, 4, storage, "resume", tracking))
    assert first.exit_code == 0, first.output
    monkeypatch.setattr(ft.F, "cross_entropy", real)
    second = runner.invoke(app, _args(data, encoder, 6, storage, "resume", tracking))
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="resume", storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "NaN" in failed[0].user_attrs["error"]
    client = MlflowClient(tracking)
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = _children(client, parent)
    assert len(children) == len(study.trials) == 7
    by_state = {c.data.tags["jbot.trial_state"]: c for c in children}
    assert by_state["FAIL"].info.status == "FAILED"
    assert sorted(int(c.data.tags["jbot.trial"]) for c in children) == list(range(7))
    assert sorted(c.info.run_name for c in children) == [f"trial-{i:03d}" for i in range(7)]
    assert client.get_run(parent).data.tags["jbot.best_run_id"] in {c.info.run_id for c in children}
    assert "test/acc" in client.get_run(parent).data.metrics  # test metrics of the best trial, once
    parent_run = client.get_run(parent)
    best = study.best_trial
    assert study.metric_names == ["val/best_acc"]
    assert parent_run.data.params["sweep.study_name"] == "resume" and parent_run.data.params["sweep.n_trials"] == "4"
    for key, value in best.params.items():  # the searched fields show the best trial's values
        assert parent_run.data.tags[f"best.{key}"] == str(value)


def test_a_default_study_name_reads_kind_data_and_objective(tmp_path: Path) -> None:
    from jbot.config import load_config
    from jbot.sweeps.study import Sweep

    sweep = Sweep("anomaly", load_space("anomaly"), load_config(None), 3, {"data": "/x/my jets", "model": "m.pt"})
    assert re.fullmatch(r"jbot-anomaly-my-jets-val-combined-auc-[0-9a-f]{8}", sweep.name), sweep.name
    assert sweep.objective == "val/combined/auc, maximize"


def test_conditional_space_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    head = "objective: v\nparams:\n  anomaly.score: {type: categorical, choices: [knn, gmm]}\n"
    for line, message in [("  anomaly.knn_k: {type: int, low: 5, high: 9, when: {anomaly.scor: [knn]}}", "listed above"),
                          ("  anomaly.knn_k: {type: int, low: 5, high: 9, when: {anomaly.score: [knm]}}", "choices are"),
                          ("  anomaly.knn_k: {type: int, low: 5, high: 9, when: {anomaly.knn_k: 5}}", "listed above")]:
        bad.write_text(head + line + "\n")
        with pytest.raises(ValueError, match=message):
            load_space(bad)


def test_anomaly_sweep_samples_each_score_its_own_settings(inputs: tuple[Path, Path], tmp_path: Path,
                                                            new_store: NewStore) -> None:
    data, encoder = inputs
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = new_store(tmp_path / "mlruns")
    result = runner.invoke(app, ["sweep", "anomaly", "--model", str(encoder), "--trials", "8", "--data", str(data),
                                 "--storage", storage, "--study-name", "scores", "--tracking-uri", tracking,
                                 "--set", "sweep.sampler=random", "--set", "anomaly.reference_size=200",
                                 "--set", "tracking.log_system_metrics=false"])
    assert result.exit_code == 0, result.output
    space = load_space("anomaly")
    own = {name: spec.when["anomaly.score"] for name, spec in space.params.items() if spec.when}
    study = optuna.load_study(study_name="scores", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8 and len({t.params["anomaly.score"] for t in complete}) > 1
    for trial in complete:  # a score's settings appear only in that score's trials
        score = trial.params["anomaly.score"]
        assert {k for k in trial.params if k in own} == {k for k, scores in own.items() if score in scores}
    assert study.metric_names == ["val/combined/auc"]
    importances = optuna.importance.get_param_importances(study)
    assert {"anomaly.score", "anomaly.reference_size"} <= set(importances)  # PED-ANOVA: conditional-aware
    client = MlflowClient(tracking)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    exp = client.get_experiment_by_name("jbot-sweep-anomaly")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    # the objective named everywhere: the runs' tags, the study's note, the plots' axes, a few-trials caveat
    assert parent.data.tags["jbot.objective"] == "val/combined/auc, maximize"
    assert all(c.data.tags["jbot.objective"] == "val/combined/auc, maximize" for c in children)
    note = study._storage.get_study_system_attrs(study._study_id)  # where optuna-dashboard keeps the note
    assert any("**Objective**: val/combined/auc, maximize" in str(v) for v in note.values())
    plots = Path(client.download_artifacts(parent.info.run_id, "plots", str(tmp_path / "plots")))
    assert "only 8 complete trials" in (plots / "param_importances.html").read_text()
    assert "val/combined/auc" in (plots / "optimization_history.html").read_text().replace("\\u002f", "/")
    for child in children:  # the anomaly run's test/{score}/{signal}/{metric}, less the score (a param here)
        assert {"val/combined/auc", "val/W/auc", "val/t/tpr_at_fpr_0.1"} <= set(child.data.metrics)
        assert not any(k.count("/") != 2 for k in child.data.metrics if k.startswith("val/"))
    best = study.best_trial
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    assert parent.data.params["anomaly.score"] == best.params["anomaly.score"]
    # tuning and `jbot anomaly` score against the same reference jets: the best trial's value is what run_anomaly
    # gives on the validation split with the best settings
    from jbot.anomaly.detect import run_anomaly
    from jbot.commands.common import load_split
    from jbot.config import load_config, with_overrides
    from jbot.train.checkpoint import load_model

    cfg = with_overrides(load_config(None, ["anomaly.reference_size=200", f"data.dir={data}"]), best.params)
    split = load_split(cfg, "qg")
    again = run_anomaly(load_model(encoder).encoder, split, cfg.anomaly, part="val", n_folds=2)
    score = best.params["anomaly.score"]
    assert again.metrics[f"{score}/combined/auc"] == pytest.approx(best.value, abs=1e-6)


def test_pretrain_sweep_on_the_validation_anomaly_auc(inputs: tuple[Path, Path], tmp_path: Path,
                                                      new_store: NewStore) -> None:
    """The second pre-training study: each trial pre-trains on q+g and is scored by its encoder's validation
    anomaly AUC, logged to the trial's run beside the k-NN monitor; on 5 classes it is an error naming the fix."""
    data, _ = inputs
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = new_store(tmp_path / "mlruns")
    sets = ["data.preset=qg", "pretrain.epochs=1", "pretrain.batch_size=64", "model.d_model=16", "model.n_heads=2",
            "model.n_layers=1", "model.d_proj=8", "anomaly.reference_size=200", "sweep.sampler=random",
            "tracking.log_system_metrics=false", "data.n_train=300", "data.n_val=100", "data.n_test=100"]
    args = ["sweep", "pretrain", "--space", "pretrain-anomaly", "--trials", "2", "--data", str(data), "--storage",
            storage, "--study-name", "anomaly-recipe", "--tracking-uri", tracking,
            *[a for item in sets for a in ("--set", item)]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="anomaly-recipe", storage=storage)
    assert study.metric_names == ["val/anomaly/combined/auc"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 and all(0.0 <= t.value <= 1.0 for t in complete)
    client = MlflowClient(tracking)
    run = client.get_run(complete[0].user_attrs["mlflow_run_id"])
    assert run.data.metrics["val/anomaly/combined/auc"] == pytest.approx(complete[0].value)
    assert {"val/anomaly/W/auc", "val/anomaly/t/auc", "val/knn_acc"} <= set(run.data.metrics)

    on_5class = runner.invoke(app, [*args[:-2 * len(sets)], "--study-name", "wrong",
                                    *[a for item in sets[1:] for a in ("--set", item)]])
    assert on_5class.exit_code == 2 and "data.preset=qg" in on_5class.output, on_5class.output


def _claims_granted(url: str) -> list[bool]:
    """Claims on one study through two storage handles, as two workers would make them."""
    from jbot.sweeps.study import claim_once, make_storage

    handles = [make_storage(url), make_storage(url)]
    try:
        first = optuna.create_study(study_name="claims", storage=handles[0])
        second = optuna.load_study(study_name="claims", storage=handles[1])
        return [claim_once(first, "jbot.x"), claim_once(second, "jbot.x"), claim_once(first, "jbot.x"),
                claim_once(second, "jbot.y")]
    finally:
        for handle in handles:
            if isinstance(handle, optuna.storages.RDBStorage):
                handle.engine.dispose()


def test_claim_once_is_granted_once(tmp_path: Path) -> None:
    """The guard of the best trial's test evaluation: one claim per key succeeds, whichever worker asks."""
    for url in (f"sqlite:///{tmp_path / 'claims.db'}", str(tmp_path / "claims.log")):
        assert _claims_granted(url) == [True, False, False, True], url


# ------------------------------------------------------------------------------ PostgreSQL, many workers
# Connections are counted: PostgreSQL allows 100 clients. The test process opens one Optuna storage per test with
# no connection pool (each query borrows and returns one connection) and disposes of it; workers and the MLflow
# server keep small pools. The MLflow server (on its own database) serves the module's tests: starting one on a new
# database (MLflow's migrations) takes 10-20 s. Each test has its own Optuna database and reads back only the runs
# of its own study.
SHARED_TRIALS = 4  # the budget of the studies the worker processes share


@pytest.fixture
def postgres(postgres_admin: str) -> Iterator[dict[str, str]]:
    with temporary_database("jbot_optuna") as url:
        yield {"optuna": url}


@pytest.fixture
def optuna_storage(postgres: dict[str, str]) -> Iterator[optuna.storages.RDBStorage]:
    """The test's one view of the study database: no pool, disposed at the end."""
    from sqlalchemy.pool import NullPool

    storage = optuna.storages.RDBStorage(postgres["optuna"], engine_kwargs={"poolclass": NullPool})
    try:
        yield storage
    finally:
        storage.engine.dispose()


@pytest.fixture(scope="module")
def pg_mlflow_server(postgres_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with temporary_database("jbot_mlflow") as backend, running_mlflow_server(
            backend, tmp_path_factory.mktemp("pg-artifacts"), workers=2) as url:
        yield url


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    # scratch files under the test's folder: a worker killed with SIGKILL cannot remove its own
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(log.parent)}
    with log.open("w") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen([JBOT, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.postgres
def test_claim_once_on_postgres(postgres: dict[str, str]) -> None:
    assert _claims_granted(postgres["optuna"]) == [True, False, False, True]


@pytest.mark.integration
@pytest.mark.postgres
def test_two_workers_share_one_study(inputs: tuple[Path, Path], tmp_path: Path, postgres: dict[str, str],
                                     optuna_storage: optuna.storages.RDBStorage, pg_mlflow_server: str) -> None:
    data, encoder = inputs
    args = [*_args(data, encoder, SHARED_TRIALS, postgres["optuna"], "shared", pg_mlflow_server),
            "--register", "jbot-clf"]
    workers = [_worker(args, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        for i, w in enumerate(workers):
            assert w.wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    finally:
        _stop(workers)
    study = optuna.load_study(study_name="shared", storage=optuna_storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert SHARED_TRIALS <= len(complete) <= SHARED_TRIALS + (2 - 1)  # trials running when the budget is hit finish
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    client = MlflowClient(tracking_uri=pg_mlflow_server, registry_uri=pg_mlflow_server)
    children = _children(client, study.user_attrs["mlflow_parent_run_id"])
    assert len(children) == len(study.trials)
    assert len({c.data.tags["jbot.trial"] for c in children}) == len(children)
    versions = client.search_model_versions("name = 'jbot-clf'")
    assert len(versions) == 1 and versions[0].run_id == client.get_run(
        study.user_attrs["mlflow_parent_run_id"]).data.tags["jbot.best_run_id"]


@pytest.mark.integration
@pytest.mark.postgres
def test_killed_worker_does_not_stop_the_study(inputs: tuple[Path, Path], tmp_path: Path, postgres: dict[str, str],
                                              optuna_storage: optuna.storages.RDBStorage,
                                              pg_mlflow_server: str) -> None:
    data, encoder = inputs
    args = _args(data, encoder, SHARED_TRIALS, postgres["optuna"], "killed", pg_mlflow_server)
    victim = _worker(args, tmp_path / "victim.log")
    try:
        deadline = time.monotonic() + 300
        running = False
        while not running and time.monotonic() < deadline and victim.poll() is None:  # until it is inside a trial
            study_id = _study_id(optuna_storage, "killed")
            running = study_id is not None and bool(optuna_storage.get_all_trials(
                study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
            time.sleep(0.2)
        assert running, "the first worker never started a trial: " + (tmp_path / "victim.log").read_text()[-3000:]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        survivor = _worker(args, tmp_path / "survivor.log")
        try:
            assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
        finally:
            _stop([survivor])
    finally:
        _stop([victim])
    study = optuna.load_study(study_name="killed", storage=optuna_storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= SHARED_TRIALS
    assert optuna.trial.TrialState.RUNNING not in states, "the killed worker's trial was failed by heartbeat"
    assert optuna.trial.TrialState.FAIL in states


def _study_id(storage: optuna.storages.RDBStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def _compose_text(text: str) -> str:
    """Compose's variable substitution with every variable unset: ``${VAR:-default}`` is the default, ``$$`` a
    literal ``$``."""
    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)
    return text.replace("\0", "$")


def _options(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


def _parsed(command: object, argv: list[str]) -> dict[str, object]:
    """``argv`` through a click command line's own parser (subcommands walked): its parameters; an unknown option or
    a bad value raises."""
    rest = list(argv)
    while hasattr(command, "commands"):
        command = command.commands[rest.pop(0)]  # type: ignore[attr-defined]
    return dict(command.make_context(command.name, rest).params)  # type: ignore[attr-defined]


def test_compose_topology_runs_what_the_scale_out_tests_run() -> None:
    """No Docker engine here: docker-compose.yml's tracking server and sweep workers run the command lines the
    tests above start (the same program and options, accepted by mlflow's and jbot's own parsers), wired to the
    databases, bucket and ports the other services provide."""
    from urllib.parse import urlsplit

    import yaml
    from mlflow.cli import cli as mlflow_cli
    from typer.main import get_command

    from tests.conftest import mlflow_server_args

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow", "worker"} <= set(services)
    db_env = services["postgres"]["environment"]
    db_user, db_password = _compose_text(db_env["POSTGRES_USER"]), _compose_text(db_env["POSTGRES_PASSWORD"])

    # the tracking server: `mlflow server` with the options of running_mlflow_server (tests/conftest.py); the
    # differences, each for a reason: the tests keep to 2 workers (PostgreSQL's 100 connections across the test
    # run); compose's workers reach it by its service name, which MLflow's host check must allow
    mlflow = services["mlflow"]
    assert mlflow["entrypoint"] == ["mlflow"]
    server = shlex.split(_compose_text(mlflow["command"]))
    ours = mlflow_server_args("postgresql://postgres@127.0.0.1:5432/mlflow", "s3://bucket/mlflow", "127.0.0.1", 5000,
                              2)
    assert server[0] == ours[0] == "server"
    assert _options(server) - {"--allowed-hosts"} == _options(ours) - {"--workers"}
    srv = _parsed(mlflow_cli, server)
    assert srv["serve_artifacts"] is True
    backend = urlsplit(str(srv["backend_store_uri"]))
    assert (backend.scheme, backend.hostname, backend.port, backend.path) == ("postgresql", "postgres", 5432,
                                                                              f"/{db_env['POSTGRES_DB']}")
    assert (backend.username, backend.password) == (db_user, db_password)
    artifacts = urlsplit(str(srv["artifacts_destination"]))
    made = re.search(r"mc mb --ignore-existing \w+/([a-z0-9.-]+)", services["create-bucket"]["entrypoint"])
    assert artifacts.scheme == "s3" and made and artifacts.hostname == made.group(1), "the bucket create-bucket makes"
    assert urlsplit(mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    port = srv["port"]
    assert f"http://localhost:{port}/health" in " ".join(mlflow["healthcheck"]["test"])
    assert f"mlflow:{port}" in str(srv["allowed_hosts"]).split(",")

    # a sweep worker: `jbot sweep finetune` (the image's entrypoint is jbot) with the options of the workers the
    # PostgreSQL tests start (_args); they name the server with --tracking-uri and shrink the run with --set,
    # compose gives every worker the server in MLFLOW_TRACKING_URI
    worker = services["worker"]
    assert "entrypoint" not in worker
    assert re.search(r'^ENTRYPOINT \["jbot"\]$', (PROJECT_ROOT / "Dockerfile").read_text(), re.M)
    argv = shlex.split(_compose_text(worker["command"]))
    ours = _args(Path("/data/jets"), Path("encoder.pt"), 30, "postgresql://postgres@127.0.0.1:5432/optuna", "study",
                 "http://mlflow:5000")
    assert argv[:2] == ours[:2] == ["sweep", "finetune"]
    assert _options(argv) == _options(ours) - {"--tracking-uri", "--set"}
    params = _parsed(get_command(app), argv)
    storage = urlsplit(str(params["storage"]))
    assert (storage.scheme, storage.hostname, storage.port, storage.path) == ("postgresql", "postgres", 5432,
                                                                              "/optuna"), "Optuna's own database"
    assert (storage.username, storage.password) == (db_user, db_password)
    assert "CREATE DATABASE optuna" in (PROJECT_ROOT / "docker" / "postgres-init.sql").read_text()
    tracking = urlsplit(worker["environment"]["MLFLOW_TRACKING_URI"])
    assert (tracking.scheme, tracking.hostname, tracking.port) == ("http", "mlflow", port)
    assert worker["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert any(volume.endswith(":/data") for volume in worker["volumes"]) and str(params["data"]).startswith("/data/")


@pytest.mark.integration
def test_dashboard_serves_the_study_storage(tmp_path: Path) -> None:
    """`jbot dashboard` on a real SQLite study store: prints the study's page, answers HTTP, stops on SIGTERM."""
    import json
    import urllib.request

    from tests.conftest import free_port

    missing = subprocess.run([JBOT, "dashboard"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no Optuna storage" in missing.stderr
    assert not (tmp_path / "sweeps").exists()  # nothing created by looking
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="watched", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    port = free_port()
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([JBOT, "dashboard", "--storage", storage, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    summaries = json.load(answer)["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer"
                time.sleep(0.5)
        assert [s["study_name"] for s in summaries] == ["watched"]
        page = f"http://127.0.0.1:{port}/dashboard/studies/{summaries[0]['study_id']}"
        with urllib.request.urlopen(page, timeout=10) as answer:
            assert answer.status == 200 and b"<html" in answer.read().lower()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        printed = log.read_text()
        assert page in printed and "GET /" not in printed  # its link, and no request log without --verbose
    finally:
        _stop([proc])


@pytest.mark.integration
def test_a_collapsing_pretrain_trial_is_pruned(inputs: tuple[Path, Path], tmp_path: Path,
                                                new_store: NewStore) -> None:
    """The collapse detector prunes a trial whatever its objective says (median pruning off here): every trial with
    the centring off (center_momentum=1.0) ends PRUNED at the epoch the collapse is seen, the others COMPLETE."""
    data, _ = inputs
    space = tmp_path / "space.yaml"
    space.write_text("objective: val/knn_acc\ndirection: maximize\nparams:\n"
                     "  pretrain.center_momentum: {type: categorical, choices: [0.9, 1.0]}\n")
    storage, tracking = f"sqlite:///{tmp_path / 'optuna.db'}", new_store(tmp_path / "mlruns")
    sets = ["pretrain.epochs=4", "pretrain.batch_size=64", "pretrain.knn_every=1", "pretrain.knn_val_size=100",
            "pretrain.collapse_patience=2", "model.d_model=16", "model.n_heads=2", "model.n_layers=1",
            "model.d_proj=8", "sweep.sampler=random", "sweep.pruner=none", "sweep.seed=0",
            "tracking.log_system_metrics=false", "data.n_train=300", "data.n_val=100", "data.n_test=100"]
    result = runner.invoke(app, ["sweep", "pretrain", "--space", str(space), "--trials", "2", "--data", str(data),
                                 "--storage", storage, "--study-name", "collapse", "--tracking-uri", tracking,
                                 *[a for item in sets for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="collapse", storage=storage).trials
    by_centre = {c: [t for t in trials if t.params["pretrain.center_momentum"] == c] for c in (0.9, 1.0)}
    assert by_centre[0.9] and by_centre[1.0], [t.params for t in trials]  # both kinds drawn (seeded)
    client = MlflowClient(tracking)
    for t in by_centre[1.0]:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.user_attrs["pruned_because"].startswith("representation collapse (epoch ")
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["jbot.trial_state"] == "PRUNED" and run.data.tags["jbot.collapse"].startswith("epoch ")
        assert len(client.get_metric_history(run.info.run_id, "health/teacher_occupancy")) < 4  # stopped early
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in by_centre[0.9])
