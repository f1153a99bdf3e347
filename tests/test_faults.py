"""Hostile and careless input, each reproduced as a user meets it: a sweep whose first start failed, resumes that
change their output, data or length, divergence, non-finite and mistyped values, full disks (a real tmpfs where
root can mount one, else the same OSError on the real write path), corrupt files, concurrent workers, `jbot ui`
stopped by SIGTERM, temporary folders, and the smaller items."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import ConfigError, load_config
from jbot.data.jetnet import DataError, read_jetnet, write_jetnet
from jbot.data.splits import make_split
from jbot.io import WriteError
from jbot.ssl.method import Distillation
from jbot.sweeps.spaces import load_space
from jbot.sweeps.study import PARENT_ATTR, Sweep, open_study
from jbot.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from jbot.train.pretrain import Pretrainer, TrainingDiverged
from tests.conftest import (
    KERAS_FIXTURES,
    TINY,
    NewStore,
    fake_jets,
    free_port,
    tiny_checkpoint,
    wait_healthy,
    write_fake_folder,
)
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import set_args as _sets

runner = CliRunner()
JBOT = str(Path(sys.executable).parent / "jbot")
SIZES = ["data.n_train=320", "data.n_val=100", "data.n_test=100", "tracking.log_system_metrics=false"]
FAST_FT = ["data.n_train=400", "data.n_val=100", "data.n_test=200", "finetune.epochs=1", "finetune.batch_size=128",
           "tracking.log_system_metrics=false"]




def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ 1. sweeps


def test_failed_first_sweep_start_blocks_nothing(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["sweep", "finetune", "--model", str(encoder), "--trials", "1", "--data", str(fake_data), "--storage",
            storage, *_sets(FAST_FT)]
    start = time.monotonic()
    down = runner.invoke(app, [*args, "--tracking-uri", "http://127.0.0.1:9"])
    assert down.exit_code == 2 and "cannot reach the MLflow tracking server" in _one_error_line(down.output)
    assert optuna.get_all_study_names(storage) == [], "a start that cannot log creates no study"
    tracking = new_store(tmp_path / "mlruns")
    up = runner.invoke(app, [*args, "--tracking-uri", tracking])
    assert up.exit_code == 0, up.output
    assert time.monotonic() - start < 60, "the second start did not wait for a parent run"


def _sweep(tmp_path: Path, seed_name: str = "s") -> Sweep:
    cfg = load_config(None, [f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "sweep.sampler=random"])
    return Sweep("finetune", load_space("finetune"), cfg, 4, {"x": seed_name},
                 storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=seed_name)


def test_a_study_without_parent_run_gets_one_from_the_next_worker(tmp_path: Path, new_store: NewStore) -> None:
    new_store(tmp_path / "mlruns")  # the store _sweep names
    sweep = _sweep(tmp_path, "orphan")
    optuna.create_study(study_name="orphan", storage=sweep.storage, direction="maximize")  # its worker died
    start = time.monotonic()
    study, parent = open_study(sweep)
    assert time.monotonic() - start < 20 and study.user_attrs[PARENT_ATTR] == parent
    assert MlflowClient(sweep.cfg.tracking.uri).get_run(parent).data.tags["jbot.role"] == "sweep-parent"


# ------------------------------------------------------------------------------------------------ 2. resume


def _pretrain(data: Path, out: Path, store: str, *extra: str) -> CliRunner:
    return runner.invoke(app, ["pretrain", "--data", str(data), "--out", str(out), "--tracking-uri", store,
                               *_sets(TINY + SIZES), *extra])


def test_resume_writes_under_its_own_out_and_continues_the_run(fake_data: Path, tmp_path: Path,
                                                                new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    first = _pretrain(fake_data, tmp_path / "a", store)
    assert first.exit_code == 0, first.output
    ckpt_a = tmp_path / "a" / "checkpoint.pt"
    before = _sha(ckpt_a)

    finished = runner.invoke(app, ["pretrain", "--resume", str(ckpt_a), "--out", str(tmp_path / "b")])
    assert finished.exit_code == 2 and "already trained 3 epochs" in _one_error_line(finished.output)
    changed_model = runner.invoke(app, ["pretrain", "--resume", str(ckpt_a), "--set", "model.d_model=64",
                                        "--set", "pretrain.epochs=4"])
    assert changed_model.exit_code == 2 and "model.d_model" in _one_error_line(changed_model.output)

    more = runner.invoke(app, ["pretrain", "--resume", str(ckpt_a), "--out", str(tmp_path / "b"),
                               "--set", "pretrain.epochs=4"])
    assert more.exit_code == 0, more.output
    assert _sha(ckpt_a) == before, "the original checkpoint is untouched"
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 4
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])
    assert len(runs) == 1, "the resumed training continued the same MLflow run"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4] and runs[0].info.status == "FINISHED"
    assert "pretrain.epochs" in runs[0].data.tags["jbot.resume_changed"]


def test_resume_on_other_data_is_refused_unless_allowed(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    assert _pretrain(fake_data, tmp_path / "a", store, "--set", "pretrain.epochs=1").exit_code == 0
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for a, b in (("q", "g"), ("g", "q"), ("w", "w"), ("z", "z"), ("t", "t")):
        (swapped / f"{a}.hdf5").write_bytes((fake_data / f"{b}.hdf5").read_bytes())
    args = ["pretrain", "--resume", str(tmp_path / "a" / "checkpoint.pt"), "--data", str(swapped), "--out",
            str(tmp_path / "b"), "--set", "pretrain.epochs=2"]
    refused = runner.invoke(app, args)
    line = _one_error_line(refused.output)
    assert refused.exit_code == 2 and "fingerprint" in line and "--allow-other-data" in line
    assert not (tmp_path / "b").exists()
    allowed = runner.invoke(app, [*args, "--allow-other-data"])
    assert allowed.exit_code == 0, allowed.output


def test_a_killed_run_is_marked_killed(tmp_path: Path, new_store: NewStore) -> None:
    from jbot.tracking.mlflow import connect, experiment_id, tracked_run

    store = new_store(tmp_path / "store")
    client = connect(store)
    exp = experiment_id(client, "jbot-pretrain", store)
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    orphan = client.create_run(exp, tags={"jbot.host": socket.gethostname(), "jbot.pid": str(dead.pid)})
    alive = client.create_run(exp, tags={"jbot.host": socket.gethostname(), "jbot.pid": str(os.getpid())})
    cfg = load_config(None, [f"tracking.uri={store}", "tracking.log_system_metrics=false"])
    with tracked_run(cfg, "pretrain"):
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING", "a live process's run is left alone"


# ------------------------------------------------------------------------------------ 3. divergence, ranges


def _poison_from(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    original = Distillation.losses
    calls = {"n": 0}

    def poisoned(self: Distillation, views: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        terms = original(self, views, masked)
        return terms * float("nan") if calls["n"] >= call else terms

    monkeypatch.setattr(Distillation, "losses", poisoned)


def test_divergence_names_only_checkpoints_this_run_wrote(fake_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, TINY)
    split = make_split(fake_data, "5class", n_train=320, n_val=100, n_test=100)
    Pretrainer(cfg, split, tmp_path / "other").fit()  # another run's checkpoint exists elsewhere
    _poison_from(monkeypatch, 1)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written") as first:
        Pretrainer(cfg, split, tmp_path / "fresh").fit()
    assert "other" not in str(first.value) and not (tmp_path / "fresh" / "checkpoint.pt").exists()
    longer = load_config(None, [*TINY, "pretrain.epochs=5"])
    resumed = Pretrainer(longer, split, tmp_path / "resumed")
    resumed.restore(tmp_path / "other" / "checkpoint.pt")
    with pytest.raises(TrainingDiverged, match="wrote no checkpoint; the one it resumed from"):
        resumed.fit()


@pytest.mark.parametrize(("column", "value", "message"), [
    (0, 1e30, "|eta_rel| > 10 or |phi_rel| > 2 pi"),
    (1, -7.0, "|eta_rel| > 10 or |phi_rel| > 2 pi"),
    (2, 1e30, "pT_rel > 2.0"),
])
def test_physically_impossible_values_are_refused(tmp_path: Path, column: int, value: float, message: str) -> None:
    particles, jets = fake_jets(20, 0, np.random.default_rng(0))
    particles[7, 0, column] = value
    path = write_jetnet(tmp_path / "q.hdf5", particles, jets)
    with pytest.raises(DataError, match=r"in 1 of 20 jets \(first at index 7\)") as err:
        read_jetnet(path)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------- 4. config values


@pytest.mark.parametrize(("override", "message"), [
    ("pretrain.base_lr=.inf", "finite"),
    ("model.feature_scale=[.nan,1,1,1]", "finite"),
    ("augment.smear_scale=.inf", "finite"),
    ("pretrain.warmup_epochs=.inf", "finite"),
    ("pretrain.epochs=true", "expected a number, got the boolean True"),
    ("finetune.lr=false", "expected a number"),
])
def test_non_finite_and_boolean_numbers_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    result = runner.invoke(app, ["config", "show", "--set", override])
    assert result.exit_code == 2 and message in _one_error_line(result.output)


def test_generator_options_use_the_same_error_format(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path / "x"), "--jets-per-class", "-5"])
    line = _one_error_line(result.output)
    assert result.exit_code == 2 and "jets_per_class: Input should be greater than 0" in line
    assert "pydantic" not in result.output and "http" not in result.output


# --------------------------------------------------------------------------------------------- 5. full disk


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str) -> Iterator[Path | None]:
    """A real tmpfs of ``size`` mounted on a fresh folder (None where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    try:
        yield mnt if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_writes_keep_the_usual_file_mode(tmp_path: Path) -> None:
    from jbot.io import atomic_write_text

    umask = os.umask(0)
    os.umask(umask)
    written = atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert written.stat().st_mode & 0o777 == 0o666 & ~umask, "readable like any file the user writes"


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = {"kind": "encoder", "weights": torch.randn(2000)}
    with small_disk(tmp_path, "512k") as disk:
        folder = disk or tmp_path / "plain"
        ckpt = save_checkpoint(folder / "checkpoint.pt", state)
        if disk is not None:
            _fill(disk)
        else:
            monkeypatch.setattr(torch, "save", _no_space)
        with pytest.raises(WriteError) as err:
            save_checkpoint(ckpt, {"kind": "encoder", "weights": torch.randn(4000)})
        assert str(ckpt) in str(err.value) and "free there" in str(err.value)
        assert torch.equal(load_checkpoint(ckpt)["weights"], state["weights"]), "the earlier checkpoint survives"
        assert sorted(p.name for p in folder.iterdir() if p.name != "filler") == ["checkpoint.pt"], "no temp file"


def test_embed_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    jets = write_jetnet(tmp_path / "jets.hdf5", *fake_jets(50, 1, np.random.default_rng(0)))
    with small_disk(tmp_path, "256k") as disk:
        folder = disk or tmp_path / "plain"
        folder.mkdir(exist_ok=True)
        if disk is not None:
            _fill(disk)
        else:
            monkeypatch.setattr(np, "savez", _no_space)
        result = runner.invoke(app, ["embed", "--model", str(encoder), "--input", str(jets), "--out",
                                     str(folder / "emb.npz")])
        line = _one_error_line(result.output)
        assert result.exit_code == 2 and "emb.npz" in line and "disk is full" in line
        assert [p.name for p in folder.iterdir() if p.name != "filler"] == [], "no temp file left behind"


def test_tracking_store_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   new_store: NewStore) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    data = write_fake_folder(tmp_path / "jets", 120)
    sets = _sets(["data.n_train=200", "data.n_val=50", "data.n_test=100", "tracking.log_system_metrics=false",
                  "evaluate.n_folds=2"])
    with small_disk(tmp_path, "24m") as disk:
        store = disk or tmp_path / "plain"
        uri = new_store(store)
        first = runner.invoke(app, ["probe", "--model", str(encoder), "--data", str(data), "--tracking-uri", uri,
                                    *sets])
        assert first.exit_code == 0, first.output
        if disk is not None:
            _fill(disk)
        else:
            from jbot.tracking.mlflow import MlflowRun

            def full(*args: object, **kwargs: object) -> None:
                raise RuntimeError("(sqlite3.OperationalError) database or disk is full")

            monkeypatch.setattr(MlflowRun, "log_params", full)
        second = runner.invoke(app, ["probe", "--model", str(encoder), "--data", str(data), "--tracking-uri", uri,
                                     *sets])
        assert second.exit_code == 2 and "disk is full" in _one_error_line(second.output)
        if disk is not None:
            (disk / "filler").unlink()
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("jbot-probe").experiment_id])
        assert any(r.info.status == "FINISHED" for r in runs), "the earlier run is intact"


# ----------------------------------------------------------------------------------------- 6. corrupt files


def _corrupt_checkpoints(tmp_path: Path) -> dict[str, Path]:
    good = tiny_checkpoint(tmp_path / "good.pt", 0)
    state = load_checkpoint(good)
    out = {}
    wider = dict(state, config={**state["config"], "model": {**state["config"]["model"], "d_model": 32}})
    out["d_model"] = save_checkpoint(tmp_path / "d_model.pt", wider)
    out["no config"] = save_checkpoint(tmp_path / "noconfig.pt", {k: v for k, v in state.items() if k != "config"})
    partial = dict(state, encoder={k: v for i, (k, v) in enumerate(state["encoder"].items()) if i % 2})
    out["partial"] = save_checkpoint(tmp_path / "partial.pt", partial)
    rand = tmp_path / "random.pt"
    rand.write_bytes(np.random.default_rng(0).bytes(20_000))
    out["random"] = rand
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = truncated
    return out


def test_corrupt_checkpoints_are_one_line(tmp_path: Path, fake_data: Path) -> None:
    for what, path in _corrupt_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        text = str(err.value)
        assert str(path) in text and "\n" not in text and len(text) < 500, (what, text)
        assert "weights_only" not in text, "never advise loading pickles"
        result = runner.invoke(app, ["probe", "--model", str(path), "--data", str(fake_data), *_sets(SIZES)])
        assert result.exit_code == 2, (what, result.output)
        _one_error_line(result.output)


def test_corrupt_keras_file_is_one_line(tmp_path: Path) -> None:
    source = KERAS_FIXTURES / "all_backbone_pretrain_32_4_2.weights.h5"
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(1)
    for start in range(512, len(data), 4096):  # damage object headers and data through the file, same size
        data[start:start + 64] = rng.bytes(64)
    bad = tmp_path / source.name
    bad.write_bytes(bytes(data))
    result = runner.invoke(app, ["import-keras", str(bad), "--out", str(tmp_path / "x.pt")])
    line = _one_error_line(result.output)
    assert result.exit_code == 2 and str(bad) in line
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------------- 7. concurrent workers


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize(): only here
def test_workers_of_one_sqlite_study_propose_different_parameters(tmp_path: Path, new_store: NewStore) -> None:
    new_store(tmp_path / "mlruns")  # the store _sweep names
    first, _ = open_study(_sweep(tmp_path, "pair"))
    second, _ = open_study(_sweep(tmp_path, "pair"))
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    a = first.ask({"x": dist}).params["x"]
    b = second.ask({"x": dist}).params["x"]
    assert a != b


# ---------------------------------------------------------------------------------------- 8. jbot ui


@pytest.mark.integration
def test_sigterm_to_jbot_ui_ends_its_server(tmp_path: Path, new_store: NewStore) -> None:
    import psutil

    from jbot.tracking.mlflow import connect, experiment_id

    port = free_port()
    store = new_store(tmp_path / "ui-store")
    exp = experiment_id(connect(store), "jbot-pretrain", store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen([JBOT, "ui", "--port", str(port), "--tracking-uri", store], stdout=out,
                              stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", ui)
        server = [p for p in psutil.Process(ui.pid).children(recursive=True)]
        assert server and len(server) <= 3, [p.cmdline() for p in server]
        printed = log.read_text()
        assert "jbot-pretrain" in printed and f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?viewStateShareKey=jbot" in printed
        assert "GET /health" not in printed, "no request log unless --verbose"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) is not None
        gone, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, f"orphaned: {[p.cmdline() for p in alive]}"
    finally:
        if ui.poll() is None:
            ui.kill()


# ------------------------------------------------------------------------------------------- 9. temp folders


@pytest.mark.integration
def test_a_finetune_sweep_leaves_no_temporary_folders(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "TMPDIR": str(scratch)}
    proc = subprocess.run([JBOT, "sweep", "finetune", "--model", str(encoder), "--trials", "2", "--data",
                           str(fake_data), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri",
                           new_store(tmp_path / "mlruns"), *_sets(FAST_FT)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(scratch.iterdir()) == [], "every temporary folder is removed"


# ------------------------------------------------------------------------------------------ 10. smaller items


def test_embed_refuses_a_batch_size_of_zero(tmp_path: Path) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    jets = write_jetnet(tmp_path / "jets.hdf5", *fake_jets(20, 1, np.random.default_rng(0)))
    zero = runner.invoke(app, ["embed", "--model", str(encoder), "--input", str(jets), "--out",
                               str(tmp_path / "e.npz"), "--batch-size", "0"])
    assert zero.exit_code == 2 and "batch-size" in zero.output


def test_float64_files_are_read_as_float32(tmp_path: Path) -> None:
    """README: "float64 is read as float32"."""
    import h5py

    particles, jet_features = fake_jets(20, 1, np.random.default_rng(0))
    with h5py.File(tmp_path / "f64.hdf5", "w") as f:
        f["particle_features"] = particles.astype(np.float64)
        f["jet_features"] = jet_features.astype(np.float64)
    assert read_jetnet(tmp_path / "f64.hdf5").particles.dtype == np.float32


def test_integer_jets_given_to_embed_are_refused(tmp_path: Path) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    np.savez(tmp_path / "ints.npz", x=np.zeros((2, 30, 4), np.int64))
    ints = runner.invoke(app, ["embed", "--model", str(encoder), "--input", str(tmp_path / "ints.npz"), "--out",
                               str(tmp_path / "e.npz")])
    assert ints.exit_code == 2 and "dtype int64" in _one_error_line(ints.output)


def test_a_class_file_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    odd = write_fake_folder(tmp_path / "odd", 50)
    (odd / "q.hdf5").unlink()
    (odd / "q.hdf5").mkdir()
    result = runner.invoke(app, ["pretrain", "--data", str(odd)])
    assert result.exit_code == 2 and "is a directory, not an HDF5 file" in _one_error_line(result.output)


def test_ctrl_c_during_a_trial_prints_no_optuna_traceback() -> None:
    from jbot.logs import quiet_optuna

    quiet_optuna()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("optuna.study._optimize")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # Optuna's warnings show with --verbose only: the filter's own logic here
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            logger.warning("Trial 3 failed", exc_info=sys.exc_info())
        try:
            raise ValueError("diverged")
        except ValueError:
            logger.warning("Trial 4 failed", exc_info=sys.exc_info())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in records] == ["Trial 4 failed"] and records[0].exc_info is None


def test_ctrl_c_during_pretraining_says_how_to_resume(fake_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = Pretrainer.run_epoch
    calls = {"n": 0}

    def interrupted(self: Pretrainer, on_step: object = None) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, on_step)  # type: ignore[arg-type]

    monkeypatch.setattr(Pretrainer, "run_epoch", interrupted)
    out = tmp_path / "pt"
    stopped = runner.invoke(app, ["pretrain", "--data", str(fake_data), "--out", str(out), *_sets(TINY + SIZES)])
    assert stopped.exit_code == 130
    assert f"jbot pretrain --resume {out / 'checkpoint.pt'}" in stopped.output.replace("\n", "")
