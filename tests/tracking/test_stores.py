"""Stores and servers as a cluster user meets them: a database that is down, an unknown scheme, credentials in a
server's URL, an SQLite store that is garbage, damaged or read-only, a read-only working folder, a full disk under
the store, a UI port in use — each one `error:` line, exit 2, in seconds — and the smaller items (text printed as it
is, a batch size cut to the training set said and logged)."""

from __future__ import annotations

import base64
import contextlib
import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from tests.conftest import TINY, NewStore, free_port, tiny_checkpoint
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import set_args as _sets

runner = CliRunner()
SIZES = ["data.n_train=320", "data.n_val=100", "data.n_test=100", "tracking.log_system_metrics=false"]




def _register_list(uri: str) -> tuple[int, str]:
    result = runner.invoke(app, ["register", "list", "--tracking-uri", uri])
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------- databases, schemes


def test_an_unreachable_database_is_one_line_in_seconds(fake_data: Path) -> None:
    start = time.monotonic()
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--tracking-uri",
                                 "postgresql://postgres:hunter2@127.0.0.1:9/x", *_sets(TINY + SIZES)])
    line = _one_error_line(result.output)
    assert result.exit_code == 2 and time.monotonic() - start < 60  # MLflow alone retried for ~2 minutes
    assert "cannot connect to the MLflow tracking database postgresql://postgres:***@127.0.0.1:9/x" in line
    assert "hunter2" not in result.output


def test_an_unsupported_scheme_is_one_line() -> None:
    code, output = _register_list("foo://bar")
    assert code == 2 and "unsupported tracking URI foo://bar: the scheme 'foo'" in _one_error_line(output)


class _Health(http.server.BaseHTTPRequestHandler):
    """/health answering 200 only with the basic-auth header of user:pw (as a proxy in front of MLflow would)."""

    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        auth = self.headers.get("Authorization")
        _Health.seen.append(auth)
        ok = auth == "Basic " + base64.b64encode(b"user:p%w").decode()
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b"OK" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    # a short poll: shutdown() waits for the serving loop to notice (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_credentials_in_a_server_url_are_sent_as_mlflow_sends_them() -> None:
    from jbot.tracking.mlflow import TrackingError, check_store

    with _health_server() as port:
        check_store(f"http://user:p%25w@127.0.0.1:{port}")  # percent-encoded as in any URL
        assert _Health.seen[-1] is not None
        with pytest.raises(TrackingError, match=r"http://user:\*\*\*@127.0.0.1"):
            check_store(f"http://user:wrong@127.0.0.1:{port}")


# ------------------------------------------------------------------------------------------ SQLite stores


def _real_store(folder: Path) -> str:
    from jbot.tracking.mlflow import connect, experiment_id

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment_id(connect(uri), "jbot-probe", uri)
    return uri


def test_a_garbage_or_damaged_store_is_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage" / "mlflow.db"
    garbage.parent.mkdir()
    garbage.write_bytes(np.random.default_rng(0).bytes(50_000))
    code, output = _register_list(f"sqlite:///{garbage}")
    assert code == 2 and f"the MLflow store {garbage} is not an SQLite database" in _one_error_line(output)

    uri = _real_store(tmp_path / "damaged")
    db = tmp_path / "damaged" / "mlflow.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = np.random.default_rng(1).bytes(3996)  # page 1 (the schema) after the file header
    db.write_bytes(bytes(data))
    code, output = _register_list(uri)
    assert code == 2 and f"the MLflow store {db} is damaged" in _one_error_line(output)


@contextlib.contextmanager
def _read_only_view(folder: Path, view: Path) -> Iterator[bool]:
    """``view``: ``folder`` bind-mounted read-only (a real read-only file system, which binds root too); False
    where it cannot be mounted."""
    view.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True).returncode == 0
    try:
        if ok:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)


def test_a_read_only_store_and_a_read_only_working_folder_are_one_line(tmp_path: Path, fake_data: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _real_store(tmp_path / "rw" / "store")
    (tmp_path / "rw" / "home").mkdir()
    with _read_only_view(tmp_path / "rw", tmp_path / "ro") as mounted:
        if not mounted:
            pytest.skip("needs root to mount a read-only file system")
        db = tmp_path / "ro" / "store" / "mlflow.db"
        code, output = _register_list(f"sqlite:///{db}")
        assert code == 2 and f"the MLflow store {db} is read-only" in _one_error_line(output)

        monkeypatch.setenv("JBOT_HOME", str(tmp_path / "ro" / "home"))
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        result = runner.invoke(app, ["pretrain", "--data", str(fake_data), *_sets(TINY + SIZES)])
        line = _one_error_line(result.output)
        assert result.exit_code == 2 and f"cannot create the MLflow store's folder {tmp_path}/ro/home/mlruns" in line
        assert "read-only file system" in line


def test_a_full_disk_under_the_store_names_the_store_and_its_free_space(tmp_path: Path, fake_data: Path) -> None:
    from tests.test_faults import _fill, small_disk

    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    sets = _sets(["data.n_train=200", "data.n_val=50", "data.n_test=100", "tracking.log_system_metrics=false",
                  "evaluate.n_folds=2"])
    with small_disk(tmp_path, "24m") as disk:
        if disk is None:
            pytest.skip("needs root to mount a small tmpfs")
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        assert runner.invoke(app, ["probe", "--model", str(encoder), "--data", str(fake_data), "--tracking-uri",
                                   uri, *sets]).exit_code == 0
        _fill(disk)
        result = runner.invoke(app, ["probe", "--model", str(encoder), "--data", str(fake_data), "--tracking-uri",
                                     uri, *sets])
        line = _one_error_line(result.output)
        assert result.exit_code == 2 and f"the disk is full while writing the store {disk / 'mlflow.db'} (" in line
        assert "free there)" in line and "working folder" not in line


# ---------------------------------------------------------------------------------------------- jbot ui


def test_jbot_ui_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = runner.invoke(app, ["ui", "--port", str(port), "--tracking-uri",
                                     f"sqlite:///{tmp_path / 'mlflow.db'}"])
    line = _one_error_line(result.output)
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in line and "--port" in line
    assert "MLflow UI for" not in result.output, "no links to a server that cannot start"


# ---------------------------------------------------------------------------------------- smaller items


def test_user_text_is_printed_as_it_is(tmp_path: Path) -> None:
    for name in ("data[v2]/jets", "br[/]", "[bold]x"):
        result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / name)])
        line = _one_error_line(result.output)
        assert result.exit_code == 2 and str(tmp_path / name) in line, line
    result = runner.invoke(app, ["config", "show", "--config", str(tmp_path / "[x].yaml")])
    assert result.exit_code == 2 and "[x].yaml" in _one_error_line(result.output)


def test_the_export_hint_keeps_its_extra(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from jbot.cli import user_errors
    from jbot.errors import JbotError

    with pytest.raises(typer.Exit), user_errors():
        raise JbotError("exporting to ONNX needs onnx: pip install 'jbot-hep[export]'")
    assert "pip install 'jbot-hep[export]'" in capsys.readouterr().err


def test_a_batch_larger_than_the_training_set_is_said_and_logged(fake_data: Path, tmp_path: Path,
                                                                 new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(tmp_path / "pt"),
                                 "--tracking-uri", store, *_sets([*TINY, *SIZES, "pretrain.batch_size=1024",
                                                                  "pretrain.epochs=1"])])
    assert result.exit_code == 0, result.output
    assert ("note: pretrain.batch_size 1024 is more than the 320 training jets: training on batches of 320"
            in result.output.replace("\n", " "))
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert run.data.params["pretrain.batch_size"] == "1024" and run.data.params["pretrain.batch_size_used"] == "320"
