"""``jbot dashboard``: optuna-dashboard on a sweep storage, served in this process (wsgiref, one thread), quiet
unless ``--verbose``. Studies are read from the storage as they are written, so it can watch running sweeps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna

from jbot import signals
from jbot.paths import default_optuna_storage
from jbot.sweeps.study import SweepError, make_storage


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def open_storage(url: str | None) -> tuple[str, Any]:
    """The storage a sweep would use; the default SQLite file must exist (a dashboard creates no study store)."""
    url = url or default_optuna_storage()
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise SweepError(f"no Optuna storage at {url.removeprefix('sqlite:///')}: run a `jbot sweep` here first, "
                         "or pass --storage")
    return url, make_storage(url)


def study_links(storage: Any, base: str) -> list[tuple[str, str]]:
    """(study name, its dashboard page) for every study in the storage."""
    names = optuna.get_all_study_names(storage)
    return [(name, f"{base}/dashboard/studies/{storage.get_study_id_from_name(name)}") for name in names]


def serve(storage: Any, host: str, port: int, quiet: bool, on_ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or a stop signal (``signals.serving``); the listening socket is closed either way."""
    from optuna_dashboard import wsgi

    try:
        server = make_server(host, port, wsgi(storage), handler_class=_QuietHandler if quiet else WSGIRequestHandler)
    except OSError as exc:
        raise SweepError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    try:
        with signals.serving():
            on_ready(f"http://{host}:{server.server_port}")
            server.serve_forever()
    finally:
        server.server_close()
