"""The scale-out stack's artifact path against a real S3 API: a moto server process (S3-compatible, like MinIO in
docker-compose.yml), an `mlflow server` on PostgreSQL proxying artifacts to ``s3://<bucket>/mlflow``, then
pretrain -> register best -> anomaly from the registry alias, as a user runs them. Every artifact must land in the
bucket (read back with boto3) and nothing in a local artifact folder. Only the server holds S3 credentials: the
client reaches S3 through the server's proxy, never directly."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from tests.conftest import TINY, free_port, running_mlflow_server, stop_group, temporary_database, write_fake_folder
from tests.conftest import set_args as _sets

runner = CliRunner()
BUCKET = "jbot-artifacts"
PREFIX = "mlflow"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SIZES = ["data.n_train=320", "data.n_val=100", "data.n_test=100", "tracking.log_system_metrics=false",
         "evaluate.n_folds=2", "anomaly.reference_size=100", "anomaly.knn_k=5", "anomaly.cosine_k=5",
         "anomaly.gmm_components=2"]
LOCAL_STORES = {"mlruns", "mlartifacts", "mlflow.db"}  # what MLflow or jbot would write without the server



@contextlib.contextmanager
def running_s3_server(log: Path, seconds: float = 60) -> Iterator[tuple[str, Any]]:
    """A real moto S3 server process on a free port; yields its endpoint and a boto3 client once it answers."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                          config=Config(connect_timeout=1, read_timeout=10, retries={"max_attempts": 1}))
        deadline = time.monotonic() + seconds
        while True:
            try:
                s3.list_buckets()
                break
            except (BotoCoreError, ClientError):
                if proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {proc.returncode}: {log.read_text()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server on {endpoint} did not answer in {seconds:.0f} s") from None
                time.sleep(0.2)
        yield endpoint, s3
    finally:
        stop_group(proc, 20)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A fresh S3 server with one empty bucket: (endpoint URL, boto3 client)."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    with running_s3_server(tmp_path / "logs" / "moto.log") as (endpoint, client):
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


@pytest.fixture
def database(postgres_admin: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the MLflow server, dropped at the end whatever still holds it open."""
    with temporary_database("jbot_s3") as url:
        yield url


@pytest.fixture
def s3_mlflow_server(database: str, s3: tuple[str, Any], tmp_path: Path) -> Iterator[str]:
    """`mlflow server` with proxied artifacts in s3://<bucket>/mlflow; its working folder is tmp_path/server."""
    endpoint, _ = s3
    (tmp_path / "server").mkdir()
    with running_mlflow_server(database, f"s3://{BUCKET}/{PREFIX}", env={"MLFLOW_S3_ENDPOINT_URL": endpoint,
                                                                        **CREDENTIALS},
                               cwd=tmp_path / "server", log=tmp_path / "logs" / "mlflow.log") as url:
        yield url


def _keys(client: Any) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.mark.integration
@pytest.mark.postgres
def test_pretrain_register_anomaly_store_every_artifact_in_s3(tmp_path: Path, s3_mlflow_server: str,
                                                              s3: tuple[str, Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # MLflow's and jbot's local stores would appear here
    monkeypatch.setenv("JBOT_HOME", str(work))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # only --tracking-uri: no fallback store
    for var in (*CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)  # the client has no way to S3 but the server's proxy
    data = write_fake_folder(tmp_path / "jets", 300)
    common = ["--tracking-uri", s3_mlflow_server]

    def jbot(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output + (tmp_path / "logs" / "mlflow.log").read_text()[-3000:]
        return result.output

    jbot("pretrain", "--data", str(data), "--preset", "qg", "--out", "runs/pt", *common, *_sets(TINY + SIZES))
    jbot("register", "best", "--experiment", "jbot-pretrain", "--metric", "val/knn_acc", "--name", "jbot-encoder",
         *common)
    jbot("anomaly", "--model", "models:/jbot-encoder@champion", "--data", str(data), "--out", "runs/anomaly",
         *common, *_sets(SIZES))

    client = MlflowClient(s3_mlflow_server)
    (pre,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    (ano,) = client.search_runs([client.get_experiment_by_name("jbot-anomaly").experiment_id])
    assert pre.info.status == "FINISHED" and ano.info.status == "FINISHED"
    for run in (pre, ano):  # proxied: the clients were handed no s3:// or local location
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    mv = client.get_model_version_by_alias("jbot-encoder", "champion")
    assert mv.run_id == pre.info.run_id

    _, s3_client = s3
    keys = _keys(s3_client)
    assert keys and all(k.startswith(f"{PREFIX}/") for k in keys), keys

    def run_prefix(run: Any) -> str:
        return f"{PREFIX}/{run.info.experiment_id}/{run.info.run_id}/artifacts/"

    pre_keys = {k.removeprefix(run_prefix(pre)) for k in keys if k.startswith(run_prefix(pre))}
    assert {"config.yaml", "plots/learning_curves.html"} <= pre_keys, sorted(pre_keys)
    assert not any(k.endswith(".pt") for k in pre_keys), "the checkpoint is uploaded once, inside the model"

    # the logged model (MLflow 3: <experiment>/models/m-<id>/artifacts/) the champion version points at
    model_id = client.get_run(pre.info.run_id).outputs.model_outputs[0].model_id
    model_prefix = f"{PREFIX}/{pre.info.experiment_id}/models/{model_id}/artifacts/"
    model_files = {k.removeprefix(model_prefix) for k in keys if k.startswith(model_prefix)}
    assert "MLmodel" in model_files and len(model_files) > 1, sorted(model_files)
    (checkpoint,) = [f for f in model_files if f.endswith(".pt")]
    body = s3_client.get_object(Bucket=BUCKET, Key=f"{model_prefix}{checkpoint}")["Body"].read()
    assert body == (work / "runs" / "pt" / "checkpoint.pt").read_bytes(), "the checkpoint in S3 is the one trained"
    assert sum(k.endswith(".pt") for k in keys if k.startswith(f"{PREFIX}/{pre.info.experiment_id}/")) == 1
    assert model_id in mv.source or model_id in str(mv.storage_location or ""), (mv.source, mv.storage_location)

    ano_keys = {k.removeprefix(run_prefix(ano)) for k in keys if k.startswith(run_prefix(ano))}
    assert {"report/anomaly_report.html", "report/anomaly_metrics.json"} <= ano_keys, sorted(ano_keys)
    assert "models:/jbot-encoder@champion" in s3_client.get_object(
        Bucket=BUCKET, Key=f"{run_prefix(ano)}report/anomaly_report.html")["Body"].read().decode()

    # nothing went to a local artifact store: not under the working folder, not beside the server
    stray = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name in LOCAL_STORES)
    assert stray == [], f"local MLflow stores written: {stray}"
    assert list((tmp_path / "server").iterdir()) == [], "the server wrote into its working folder"


def test_the_image_that_runs_the_s3_server_installs_boto3() -> None:
    """docker-compose's MLflow server writes s3:// artifacts from the jbot image: the extras that image installs must
    bring boto3 (MLflow imports it only at the first upload, so a missing one fails every run's artifacts)."""
    import re
    import tomllib

    from tests.conftest import PROJECT_ROOT

    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.search(r'pip install "/tmp/jbot-src\[([a-z0-9,]+)\]"', (PROJECT_ROOT / "Dockerfile").read_text())
    assert installed, "the Dockerfile installs jbot from its source with extras"
    wanted = [req for extra in installed.group(1).split(",") for req in extras[extra]]
    assert any(req.startswith("boto3") for req in wanted), wanted
    assert "s3://" in (PROJECT_ROOT / "docker-compose.yml").read_text()
