"""`jbot data fetch` against a local stand-in for Zenodo (the real one cannot be reached from CI)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jbot.cli import app
from jbot.data.fetch import ZENODO_RECORD, fetch_jetnet
from jbot.data.jetnet import DataError, read_jetnet, write_jetnet
from tests.conftest import fake_jets


@pytest.fixture
def zenodo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    src = tmp_path / "src"
    p, j = fake_jets(50, 0, np.random.default_rng(0))
    body = write_jetnet(src / "q.hdf5", p, j).read_bytes()
    state = {"md5": hashlib.md5(body).hexdigest(), "body": body}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            port = self.server.server_address[1]
            if self.path == f"/api/records/{ZENODO_RECORD}":
                files = [{"key": "q.hdf5", "checksum": f"md5:{state['md5']}", "size": len(state["body"]),
                          "links": {"self": f"http://127.0.0.1:{port}/files/q.hdf5"}}]
                payload = json.dumps({"files": files}).encode()
            elif self.path == "/files/q.hdf5":
                payload = state["body"]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # a short poll: shutdown() waits for the serving loop to notice (0.5 s by default)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("JBOT_ZENODO_API", f"http://127.0.0.1:{server.server_address[1]}/api/records")
    yield state
    server.shutdown()


def test_download_checks_md5(zenodo: dict, tmp_path: Path) -> None:
    files = fetch_jetnet(tmp_path / "out", ("q",))
    assert len(read_jetnet(files["q"])) == 50
    zenodo["md5"] = "0" * 32  # the record now disagrees with the bytes served
    (tmp_path / "out" / "q.hdf5").unlink()
    with pytest.raises(DataError, match="md5 .* does not match"):
        fetch_jetnet(tmp_path / "out", ("q",))
    assert not list((tmp_path / "out").iterdir()), "no partial file left behind"


def test_missing_class_in_record(zenodo: dict, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no file w.hdf5"):
        fetch_jetnet(tmp_path, ("w",))


def test_unreachable_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JBOT_ZENODO_API", "http://127.0.0.1:9/api/records")  # nothing listens on port 9
    start = time.monotonic()
    result = CliRunner().invoke(app, ["data", "fetch", "--out", str(tmp_path), "--timeout", "3"])
    assert time.monotonic() - start < 10
    assert result.exit_code == 2 and "cannot reach Zenodo" in result.output
