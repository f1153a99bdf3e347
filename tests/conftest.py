"""Shared fixtures: synthetic JetNet-layout folders (valid by construction, class-dependent shapes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jbot.data.classes import CLASSES
from jbot.data.jetnet import class_file, write_jetnet

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (for files that are not package data)
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
REQUIRE_POSTGRES_ENV = "JBOT_REQUIRE_POSTGRES"


# the authors' published Keras weights and golden outputs used by the parity tests
KERAS_FIXTURES = Path(__file__).parent / "fixtures" / "keras"

def fake_jets(n: int, cls_index: int, rng: np.random.Generator, n_particles: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Jets whose multiplicity and angular spread depend on the class, so classes are (weakly) separable."""
    mult = rng.integers(5 + 3 * cls_index, min(n_particles, 12 + 4 * cls_index) + 1, size=n)
    particles = np.zeros((n, n_particles, 4), dtype=np.float32)
    spread = 0.05 + 0.04 * cls_index
    for i, m in enumerate(mult):
        pt = np.sort(rng.exponential(1.0, size=m))[::-1] + 1e-3
        particles[i, :m, 0] = rng.normal(0, spread, m)
        particles[i, :m, 1] = rng.normal(0, spread, m)
        particles[i, :m, 2] = pt / pt.sum()
        particles[i, :m, 3] = 1.0
    jets = np.stack([rng.normal(1000, 50, n), rng.normal(0, 1, n), rng.normal(30 + 40 * cls_index, 10, n),
                     mult.astype(float)], axis=1).astype(np.float32)
    return particles, jets


# every branch of a JetClass file (Qu, Li, Qian 2022): 16 jagged particle branches, the jet's, the 10 labels
JETCLASS_PARTICLE_BRANCHES = ("px", "py", "pz", "energy", "deta", "dphi", "d0val", "d0err", "dzval", "dzerr",
                              "charge", "isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon")
JETCLASS_LABELS = ("QCD", "Hbb", "Hcc", "Hgg", "H4q", "Hqql", "Zqq", "Wqq", "Tbqq", "Tbl")


def write_jetclass(path: Path, n: int, seed: int, cls_index: int = 0, max_count: int = 45,
                   drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JetClass-layout file with every branch (``drop``: leave these out): ROOT (TTree 'tree', as uproot writes
    it) or parquet (one row per jet, the branch names as columns) by ``path``'s suffix. Particles unsorted,
    massless, their spread and count growing with ``cls_index`` (classes weakly separable). Returns the truth."""
    ak = pytest.importorskip("awkward")
    rng = np.random.default_rng(seed)
    counts = rng.integers(2 + cls_index, max_count, n)
    total = int(counts.sum())
    pt = rng.exponential(10.0, total) + 0.5
    spread = 0.1 + 0.03 * cls_index
    deta, dphi = rng.normal(0, spread, total), rng.normal(0, spread, total)
    angle = rng.uniform(-np.pi, np.pi, total)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    jet_eta = rng.normal(0, 1, n)
    eta = deta + np.repeat(jet_eta, counts)
    energy = pt * np.cosh(eta)
    charge = rng.choice([-1.0, 0.0, 1.0], total)
    kind = np.where(charge != 0, rng.choice([0, 3, 4], total, p=[0.9, 0.05, 0.05]), rng.choice([1, 2], total))
    flags = {name: (kind == k).astype(np.float64) for k, name in enumerate(
        ("isChargedHadron", "isNeutralHadron", "isPhoton", "isElectron", "isMuon"))}
    d0 = np.where(charge != 0, rng.normal(0, 0.05, total), 0.0)
    dz = np.where(charge != 0, rng.normal(0, 0.1, total), 0.0)
    values = {"px": pt * np.cos(angle), "py": pt * np.sin(angle), "pz": pt * np.sinh(eta), "energy": energy,
              "deta": deta, "dphi": dphi, "d0val": d0, "d0err": np.abs(d0) * 0.1 + 0.01, "dzval": dz,
              "dzerr": np.abs(dz) * 0.1 + 0.01, "charge": charge, **flags}
    jet_pt = np.add.reduceat(pt, starts)
    jets = {"jet_pt": jet_pt, "jet_eta": jet_eta, "jet_phi": rng.uniform(-np.pi, np.pi, n),
            "jet_energy": np.add.reduceat(energy, starts), "jet_nparticles": counts.astype(np.float64),
            "jet_sdmass": rng.uniform(10, 200, n),
            **{f"jet_tau{i}": rng.uniform(0, 1, n) for i in range(1, 5)},
            **{f"label_{name}": np.full(n, float(k == cls_index)) for k, name in enumerate(JETCLASS_LABELS)}}
    jets = {k: v for k, v in jets.items() if k not in drop}
    part = {k: ak.unflatten(v, counts) for k, v in values.items() if f"part_{k}" not in drop}
    if path.suffix == ".parquet":
        ak.to_parquet(ak.Array({**{f"part_{k}": v for k, v in part.items()}, **jets}), path)
    else:
        uproot = pytest.importorskip("uproot")
        branches = {"part": ak.zip(part), **jets}
        with uproot.recreate(path) as f:  # JetClass's names: part_deta, ... counted by n_part
            f.mktree("tree", {k: v.type if k == "part" else v.dtype for k, v in branches.items()},
                     field_name=lambda outer, inner: f"{outer}_{inner}", counter_name=lambda counted: f"n_{counted}")
            f["tree"].extend(branches)
    return {"pt": pt, "counts": counts, "deta": deta, "jet_pt": jet_pt, "energy": energy, "charge": charge,
            "jet_energy": jets.get("jet_energy"), **{f"part_{k}": v for k, v in values.items()}}


def write_jetclass_folder(path: Path, n: int, channels: tuple[str, ...], suffix: str = ".root",
                          seed: int = 0) -> Path:
    """One file per channel (``HToBB_000.root``), the channel's class index setting its shapes."""
    from jbot.data.presets import JETCLASS_NAMES

    path.mkdir(parents=True, exist_ok=True)
    for channel in channels:
        write_jetclass(path / f"{channel}_000{suffix}", n, seed + list(JETCLASS_NAMES).index(channel),
                       list(JETCLASS_NAMES).index(channel))
    return path


def write_fake_folder(path: Path, n_per_class: int | dict[str, int], seed: int = 0,
                      classes: tuple[str, ...] = CLASSES) -> Path:
    rng = np.random.default_rng(seed)
    for i, c in enumerate(CLASSES):
        if c not in classes:
            continue
        n = n_per_class[c] if isinstance(n_per_class, dict) else n_per_class
        write_jetnet(class_file(path, c), *fake_jets(n, i, rng))
    return path


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small 5-class folder (400 jets per class) shared by tests that only read it."""
    return write_fake_folder(tmp_path_factory.mktemp("jets"), 400)


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test logs to its own session-wide SQLite store, never to the project's mlruns/."""
    root = tmp_path_factory.getbasetemp() / "mlflow-store"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")


NewStore = Callable[[Path], str]  # the new_store fixture


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, made once per session: creating its tables takes seconds."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def new_store(_empty_store: Path) -> NewStore:
    """``new_store(folder)``: the ``sqlite:///`` URI of a fresh, empty MLflow store ``folder/mlflow.db`` (a copy of
    one made once; nothing in it but MLflow's tables and its Default experiment)."""

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "mlflow.db"
        assert not db.exists(), f"{db} exists already"
        shutil.copyfile(_empty_store, db)
        return f"sqlite:///{db}"

    return make


def psql(sql: str) -> None:
    """One statement on the admin database, on a connection closed right after."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    """PostgreSQL on 127.0.0.1:5432, or a skip with the reason (a failure where CI sets JBOT_REQUIRE_POSTGRES=1)."""
    import psycopg

    try:
        psql("select 1")
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) does not answer: {exc}".strip()
        if os.environ.get(REQUIRE_POSTGRES_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_POSTGRES_ENV}=1)")
        pytest.skip(reason)
    return POSTGRES_ADMIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until ``url``/health answers; an error if ``proc`` exits first or nothing answers in time."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not become healthy in {seconds:.0f} s") from None
            time.sleep(0.5)


def mlflow_server_args(backend: str, artifacts: Path | str, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow`` arguments of the tests' tracking server (docker-compose.yml's ``mlflow`` service is checked
    against them): proxied artifacts in ``artifacts``, runs in ``backend``."""
    return ["server", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(workers)]


@contextlib.contextmanager
def running_mlflow_server(backend: str, artifacts: Path | str, workers: int = 1, env: dict[str, str] | None = None,
                          cwd: Path | None = None, log: Path | None = None) -> Iterator[str]:
    """A real `mlflow server` process on a free port (proxied artifacts); yields its URL once healthy.

    ``artifacts``: a local folder or a URI (``s3://bucket/prefix``); ``env``: extra variables for the server only
    (S3 endpoint and credentials); ``cwd``: its working folder; ``log``: a file for its output (else discarded)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", *mlflow_server_args(backend, artifacts, "127.0.0.1", port, workers)]
    # small connection pools: a PostgreSQL backend serves at most 100 clients to everything in the test run
    server_env = {**os.environ, "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "4",
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}  # no GenAI job runners beside it
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("w")) if log else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=server_env,
                                cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM to the process group a server was started in (``start_new_session``), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=seconds)


@contextlib.contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database's URL, dropped at the end whatever still holds it open."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
             "AND pid <> pg_backend_pid()")
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# A tiny jBOT (1 layer, D = 16) and a short pre-training: the settings tests train and load quickly.
TINY = ["pretrain.epochs=3", "pretrain.batch_size=64", "pretrain.warmup_epochs=1", "pretrain.knn_every=2",
        "pretrain.knn_val_size=100", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_proj=8"]


def tiny_checkpoint(path: Path, seed: int) -> Path:
    """An untrained TINY encoder saved as a jbot encoder checkpoint (weights drawn with ``seed``)."""
    import torch

    from jbot.config import load_config
    from jbot.model.encoder import JetEncoder
    from jbot.train.checkpoint import save_checkpoint

    cfg = load_config(None, TINY)
    torch.manual_seed(seed)
    enc = JetEncoder(cfg.model)
    return save_checkpoint(path, {"kind": "encoder", "config": cfg.model_dump(mode="json"),
                                  "encoder": enc.state_dict()})


def jet_batch(n: int = 64, seed: int = 0) -> Any:
    """(n, 30, 4) float32 jets of four classes as a torch tensor; the first is a full 30-particle jet."""
    import torch

    rng = np.random.default_rng(seed)
    xs = [fake_jets(n // 4, c, rng)[0] for c in range(4)]
    x = torch.as_tensor(np.concatenate(xs))
    x[0] = 0.0
    x[0, :30, 3] = 1.0  # a full jet: nothing to split into
    x[0, :, 2] = 1.0 / 30
    return x


def cli_ok(store: str) -> Callable[..., str]:
    """``ok(*args)``: a jbot command against the tracking store ``store`` that must succeed; returns its output."""
    from typer.testing import CliRunner

    from jbot.cli import app

    runner = CliRunner()

    def ok(*args: str) -> str:
        result = runner.invoke(app, [*args, "--tracking-uri", store])
        assert result.exit_code == 0, f"{args[:2]}: {result.output}"
        return result.output

    return ok


def set_args(items: list[str]) -> list[str]:
    """``["a.b=1", ...]`` -> ``["--set", "a.b=1", ...]``."""
    return [a for item in items for a in ("--set", item)]


def one_error_line(output: str) -> str:
    """The one ``error:`` paragraph (rich wraps it at the terminal width), after at most the command's header."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(starts) == 1 and starts[0] <= 3, output
    assert "Traceback" not in output, output
    return " ".join(lines[starts[0]:])
