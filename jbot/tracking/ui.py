"""``jbot ui``: the MLflow UI on a local store, as one server process in its own process group, beside
``sweeps/dashboard.py`` (optuna-dashboard). Both end the same way on Ctrl-C or a stop signal
(``signals.serving``), and this one takes its whole process group with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from jbot import signals
from jbot.config import ConfigError
from jbot.tracking.mlflow import (
    compare_link,
    connect,
    experiment_link,
    jbot_experiments,
    registry_link,
    save_runs_view,
)


def require_free_port(host: str, port: int) -> None:
    """The UI's address can be listened on (else one line now, not a server that dies after printing its links)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed port is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()}): another "
                              "program uses the port; pass --port with a free one") from None


def experiment_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment name, its runs page with jbot's saved view) for every jbot experiment in the store, then the
    model registry's page when it holds a model (a view is written only where it changed)."""
    client = connect(uri)
    links = []
    for exp in jbot_experiments(client):
        links.append((exp.name, experiment_link(base, exp.experiment_id, save_runs_view(client, exp.experiment_id))))
        links += comparison_links(client, exp.experiment_id, base)
    if client.search_registered_models(max_results=1):
        links.append(("model registry", registry_link(base)))
    return links


def comparison_links(client: Any, experiment_id: str, base: str, newest: int = 3) -> list[tuple[str, str]]:
    """For the newest reproductions and sweeps of an experiment: MLflow's comparison page of their child runs (the
    runs table opens a parent collapsed; this shows its steps or trials side by side)."""
    parents = client.search_runs([experiment_id], "tags.`jbot.role` LIKE '%-parent'",  # reproduce- and sweep-
                                 max_results=newest, order_by=["attributes.start_time DESC"])
    out = []
    for parent in parents:
        children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                      max_results=100)
        if children:
            out.append((f"  {parent.info.run_name} ({len(children)} runs)",
                        compare_link(base, experiment_id, [c.info.run_id for c in children])))
    return out


def serve_ui(uri: str, host: str, port: int, quiet: bool, on_ready: Callable[[str], None]) -> None:
    """Serve the MLflow UI for the store ``uri`` until Ctrl-C or a stop signal. The store's URI goes to the server
    by the environment, not the command line (which `ps` shows every user of a shared machine)."""
    require_free_port(host, port)
    on_ready(f"http://{host}:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1"]
    # one server process (no GenAI job runners)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_BACKEND_STORE_URI": uri,
           "MLFLOW_REGISTRY_STORE_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    if quiet:  # the server's request log and start-up notices only with --verbose
        cmd += ["--uvicorn-opts", "--log-level warning --no-access-log"]
        env["PYTHONWARNINGS"] = "ignore"
    server = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        with signals.serving():
            server.wait()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
