"""A cluster's signals, sent to real jbot processes: SIGTERM (and SIGUSR1, SLURM's warning) stop a command in order
— a checkpoint at the step it stopped, the MLflow run KILLED with the resume command, trials failed and re-queued,
scratch folders removed — and exit with 128 + the signal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from jbot.train.checkpoint import load_checkpoint
from tests.conftest import NewStore, tiny_checkpoint, write_fake_folder
from tests.conftest import set_args as _sets

pytestmark = pytest.mark.integration
JBOT = str(Path(sys.executable).parent / "jbot")
# 80 training jets in batches of 2: 40 steps an epoch, so a signal sent when epoch 1 ends lands inside epoch 2
SLOW_STEPS = ["pretrain.epochs=2", "pretrain.batch_size=2", "pretrain.warmup_epochs=1", "pretrain.knn_every=0",
              "pretrain.knn_val_size=50", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_proj=8",
              "data.n_train=80", "data.n_val=20", "data.n_test=20", "tracking.log_system_metrics=false"]



def _env(tmp_path: Path, store: str) -> dict[str, str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": store, "TMPDIR": str(scratch), "JBOT_HOME": str(tmp_path)}


def _start(args: list[str], tmp_path: Path, env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([JBOT, *args], stdout=o, stderr=e, cwd=tmp_path, env=env)
    return proc, out, err


def _wait_for(proc: subprocess.Popen, path: Path, text: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert proc.poll() is None, f"exited {proc.returncode} before printing {text!r}: {path.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} not printed in {seconds} s"
        time.sleep(0.02)


def _scratch_left(tmp_path: Path) -> list[str]:
    """jbot's scratch folders left in the processes' TMPDIR (torch's own compile cache may stay)."""
    return [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("jbot-")]


def _finish(proc: subprocess.Popen, seconds: float = 300) -> int:
    try:
        return proc.wait(timeout=seconds)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_mid_epoch_then_resume_auto_equals_an_uninterrupted_run(tmp_path: Path, new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 120)
    store = new_store(tmp_path / "store")
    env = _env(tmp_path, store)
    args = ["pretrain", "--data", str(data), "--out", "runs/x", "--resume", "auto", *_sets(SLOW_STEPS)]
    proc, out, err = _start(args, tmp_path, env, "first")
    _wait_for(proc, out, "epoch 1/2")
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 143, err.read_text()
    line = err.read_text().strip()
    assert line.startswith("stopped by SIGTERM at epoch 2, step ") and "Traceback" not in line, line
    assert "jbot pretrain --resume runs/x/checkpoint.pt" in line
    state = load_checkpoint(tmp_path / "runs" / "x" / "checkpoint.pt")
    assert state["epoch"] == 1 and 0 < state["step"] < 40, "a checkpoint at the step it stopped"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jbot-pretrain").experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "KILLED"
    assert run.data.tags["jbot.resume_command"] == f"jbot pretrain --resume {tmp_path}/runs/x/checkpoint.pt"
    assert run.data.tags["jbot.stopped"].startswith("stopped by SIGTERM at epoch 2, step")
    assert _scratch_left(tmp_path) == [], "scratch removed"

    again, _, err2 = _start(args, tmp_path, env, "again")  # the same command line, as a requeued job runs it
    assert _finish(again) == 0, err2.read_text()
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED", "the resumed training finished the same MLflow run"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2]

    whole, _, err3 = _start(["pretrain", "--data", str(data), "--out", "runs/whole", *_sets(SLOW_STEPS)],
                            tmp_path, env, "whole")
    assert _finish(whole) == 0, err3.read_text()
    a = load_checkpoint(tmp_path / "runs" / "x" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoint.pt")
    for part in ("student", "teacher", "centers"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after the stop and resume"
    assert a["history"]["train/loss"] == b["history"]["train/loss"]


def _wait_until(check: object, proc: subprocess.Popen, err: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert proc.poll() is None, f"exited {proc.returncode}: {err.read_text()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _runs(store: str, experiment: str) -> list:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _running(store: str, experiment: str, **tags: str) -> bool:
    """A run of ``experiment`` with these tags is RUNNING. Read from the SQLite file, read-only, while the command
    works: an MLflow client here would create the tables of a store the command is creating (two migrations of one
    new file collide)."""
    import sqlite3

    db = Path(store.removeprefix("sqlite:///"))
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            runs = con.execute("SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = "
                               "e.experiment_id WHERE e.name = ? AND r.status = 'RUNNING'", (experiment,)).fetchall()
            for (run_id,) in runs:
                have = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
                if all(have.get(k) == v for k, v in tags.items()):
                    return True
    except sqlite3.OperationalError:  # no tables yet, or locked by the command's write
        return False
    return False


FT = ["data.n_train=400", "data.n_val=100", "data.n_test=100", "finetune.batch_size=32", "finetune.patience=500",
      "tracking.log_system_metrics=false"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_sweep_worker_fails_and_requeues_its_trial_and_ends_its_parent(tmp_path: Path, sig: int,
                                                                                  new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 120)
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    store = new_store(tmp_path / "store")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = _env(tmp_path, store)
    base = ["sweep", "finetune", "--model", str(encoder), "--data", str(data), "--storage", storage,
            "--study-name", "s", "--trials", "2"]
    proc, _, err = _start([*base, *_sets([*FT, "finetune.epochs=500"])], tmp_path, env, "sweep")

    def running() -> bool:
        with_run = [t for t in _trials(storage) if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs]
        return bool(with_run) and _running(store, "jbot-sweep-finetune", **{"jbot.trial": "0"})

    _wait_until(running, proc, err)
    proc.send_signal(sig)
    assert _finish(proc) == 128 + sig, err.read_text()
    line = err.read_text().strip()
    said = "stopped by SIGTERM" if sig == signal.SIGTERM else "interrupted"
    assert line.startswith(f"{said}: completed trials are kept") and "\n" not in line, line
    trials = _trials(storage)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].system_attrs["fixed_params"] == trials[0].params, "queued again with the same parameters"
    assert trials[1].user_attrs["jbot.retry_of"] == 0
    runs = {r.data.tags.get("jbot.role", "trial"): r for r in _runs(store, "jbot-sweep-finetune")}
    assert runs["trial"].info.status == "KILLED" and runs["sweep-parent"].info.status == "KILLED"
    assert _scratch_left(tmp_path) == [], "the worker's scratch folder (trial checkpoints) is removed"
    if sig == signal.SIGINT:
        return
    again, _, err2 = _start([*base, *_sets([*FT, "finetune.epochs=1"])], tmp_path, env, "again")
    assert _finish(again) == 0, err2.read_text()
    retried = _trials(storage)[1]
    assert retried.state.name == "COMPLETE" and retried.params == trials[0].params, "retried with the same params"


def _trials(storage: str) -> list:
    try:
        return optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def test_sigterm_to_finetune_ends_its_run_killed(tmp_path: Path, new_store: NewStore) -> None:
    data = write_fake_folder(tmp_path / "jets", 120)
    store = new_store(tmp_path / "store")
    proc, _, err = _start(["finetune", "--from-scratch", "--data", str(data), "--out", "runs/ft",
                           *_sets([*FT, "finetune.epochs=500"])], tmp_path, _env(tmp_path, store), "ft")
    _wait_until(lambda: _running(store, "jbot-finetune"), proc, err)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 143, err.read_text()
    assert err.read_text().strip() == "stopped by SIGTERM: files and runs written before are intact"
    (run,) = _runs(store, "jbot-finetune")
    assert run.info.status == "KILLED"


def test_sigusr1_to_reproduce_ends_parent_and_step_killed(tmp_path: Path, new_store: NewStore) -> None:
    from tests.commands.test_reproduce import QUICK

    data = write_fake_folder(tmp_path / "jets", 400)
    store = new_store(tmp_path / "store")
    proc, _, err = _start(["reproduce", "--scale", "demo", "--data", str(data), "--out", "out",
                           *_sets([*QUICK, "pretrain.epochs=50"])], tmp_path, _env(tmp_path, store), "repro")
    _wait_until(lambda: _running(store, "jbot-reproduce", **{"jbot.command": "pretrain"}), proc, err)
    proc.send_signal(signal.SIGUSR1)
    assert _finish(proc) == 138, err.read_text()
    assert "stopped by SIGUSR1: the parent run and the running step are KILLED; finished steps are kept" in \
        err.read_text()
    runs = _runs(store, "jbot-reproduce")
    assert sorted(r.info.status for r in runs) == ["KILLED", "KILLED"]
    parent = next(r for r in runs if r.data.tags.get("jbot.role") == "reproduce-parent")
    assert parent.data.tags["jbot.stopped"] == "stopped by SIGUSR1"


def _children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_sigterm_to_data_generate_leaves_no_file_and_no_worker(tmp_path: Path) -> None:
    import psutil

    pytest.importorskip("pythia8mc")
    out = tmp_path / "gen"
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc, _, err = _start(["data", "generate", "--out", str(out), "--jets-per-class", "5000", "--classes", "q,g",
                           "--workers", "2"], tmp_path, _env(tmp_path, store), "gen")
    _wait_until(lambda: len(_children(proc.pid)) >= 2, proc, err)
    workers = _children(proc.pid)
    time.sleep(1.0)  # the workers are generating
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 143, err.read_text()
    assert err.read_text().strip() == "stopped by SIGTERM: files and runs written before are intact"
    assert not out.exists() or list(out.iterdir()) == [], "no file, no temp file"
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "the generator's worker processes end with it"


def test_sigterm_to_data_convert_keeps_finished_shards_and_no_temp_file(tmp_path: Path) -> None:
    from tests.data.test_stream import write_jetclass_root

    raw = tmp_path / "jetclass"
    raw.mkdir()
    for i in range(12):
        write_jetclass_root(raw / f"HToBB_{i:03d}.root", 3000, i)
    out = tmp_path / "h5"
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc, _, err = _start(["data", "convert", "--from", str(raw), "--out", str(out), "--chunk", "50"], tmp_path,
                          _env(tmp_path, store), "convert")
    _wait_until(lambda: out.is_dir() and any(p.suffix == ".h5" or p.suffix == ".hdf5" for p in out.iterdir()),
                proc, err)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 143, err.read_text()
    assert err.read_text().strip() == "stopped by SIGTERM: files and runs written before are intact"
    left = sorted(p.name for p in out.iterdir())
    assert left and all(not name.startswith(".") for name in left), left  # finished shards only, no temp file
    again = subprocess.run([JBOT, "data", "convert", "--from", str(raw), "--out", str(out), "--chunk", "500"],
                           capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path, store), timeout=300)
    assert again.returncode == 0 and "already converted" in again.stdout, again.stdout + again.stderr
