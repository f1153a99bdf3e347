"""No credential leaves the store: a pretrain -> sweep -> register -> anomaly -> export session with a password in
the tracking URI and in the Optuna storage URL, then every file it wrote, every table of both databases and every
line it printed is searched for either password."""

from __future__ import annotations

import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jbot.cli import app
from tests.conftest import TINY, temporary_database, write_fake_folder
from tests.conftest import set_args as _sets

pytestmark = pytest.mark.integration
runner = CliRunner()
TRACKING_PW = "tracking-Pw-9c1f7e"
OPTUNA_PW = "optuna-Pw-5b2d44"
SIZES = ["data.n_train=320", "data.n_val=100", "data.n_test=100", "tracking.log_system_metrics=false",
         "evaluate.n_folds=2", "anomaly.reference_size=100", "anomaly.knn_k=5", "anomaly.cosine_k=5",
         "anomaly.gmm_components=2"]



@pytest.fixture
def databases(postgres_admin: str) -> Iterator[dict[str, str]]:
    """Two fresh databases; their URIs carry a password (trust auth accepts any)."""
    with temporary_database("jbot_secret_mlflow") as mlflow, temporary_database("jbot_secret_optuna") as optuna:
        yield {"mlflow": mlflow.rsplit("/", 1)[1], "optuna": optuna.rsplit("/", 1)[1]}


def _files_with(root: Path, secrets: tuple[str, ...]) -> list[str]:
    """Files under ``root`` holding a secret in their bytes, or in any member of a zip (torch checkpoints)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(name) for name in z.namelist()]
        if any(s.encode() in blob for s in secrets for blob in blobs):
            found.append(str(path.relative_to(root)))
    return found


@pytest.mark.postgres
def test_no_password_in_anything_a_session_writes_or_prints(tmp_path: Path, databases: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # MLflow's default artifact folder (./mlruns) is searched with everything else
    monkeypatch.setenv("JBOT_HOME", str(work))
    monkeypatch.setenv("TMPDIR", str(work / "tmp"))
    (work / "tmp").mkdir()
    uri = f"postgresql://postgres:{TRACKING_PW}@127.0.0.1:5432/{databases['mlflow']}"
    storage = f"postgresql://postgres:{OPTUNA_PW}@127.0.0.1:5432/{databases['optuna']}"
    data = write_fake_folder(work / "jets", 300)
    common = ["--tracking-uri", uri]
    printed = []

    def jbot(*args: str) -> None:
        result = runner.invoke(app, list(args))
        printed.append(result.output)
        assert result.exit_code == 0, result.output

    jbot("pretrain", "--data", str(data), "--preset", "qg", "--out", "runs/pt", *common, *_sets(TINY + SIZES))
    jbot("sweep", "anomaly", "--model", "runs/pt/checkpoint.pt", "--trials", "1", "--data", str(data),
         "--storage", storage, *common, *_sets(SIZES))
    jbot("register", "best", "--experiment", "jbot-pretrain", "--metric", "val/knn_acc", *common)
    jbot("anomaly", "--model", "models:/jbot-encoder@champion", "--data", str(data), "--out", "runs/anomaly",
         *common, *_sets(SIZES))
    jbot("export", "--model", "models:/jbot-encoder@champion", "--out", "runs/encoder.onnx", *common)
    bad = runner.invoke(app, ["pretrain", "--data", str(data), "--tracking-uri",
                              f"postgresql://postgres:{TRACKING_PW}@127.0.0.1:9/nowhere"])
    assert bad.exit_code == 2
    printed.append(bad.output)

    secrets = (TRACKING_PW, OPTUNA_PW)
    assert (work / "runs" / "pt" / "checkpoint.pt").is_file() and (work / "mlruns").is_dir()
    assert _files_with(work, secrets) == [], "a file holds a password"
    assert not any(s in text for s in secrets for text in printed), "a printed line holds a password"
    for name in databases.values():
        dump = subprocess.run(["pg_dump", "--data-only", "-h", "127.0.0.1", "-U", "postgres", name],
                              capture_output=True, text=True, check=True).stdout
        assert "postgres:***@127.0.0.1" in dump or name.startswith("jbot_secret_optuna"), "the redacted URI is logged"
        assert not any(s in dump for s in secrets), f"database {name} holds a password"
