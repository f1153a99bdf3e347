"""examples/slurm/: the job scripts parse, their jbot command lines run for real, and their requeue logic works.

Each script keeps its settings and its jbot command line between marked comments; bash itself expands them
here with test values (a tiny data folder, an SQLite MLflow store and an Optuna journal file under tmp_path),
and the resulting argv runs as a real subprocess: the pre-training line under torchrun (``--nproc-per-node 1``,
CPU), the sweep line as it is. The requeue logic runs the whole scripts with a fake ``scontrol`` on PATH that
records its arguments: with stand-ins for torchrun and jbot under the warning signal (jbot's own answer to
SIGTERM / SIGUSR1 is tested in tests/test_signals.py), and with the real jbot lines at their normal end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, TINY, tiny_checkpoint
from tests.conftest import set_args as _sets

SLURM = PROJECT_ROOT / "examples" / "slurm"
PRETRAIN, SWEEP = SLURM / "pretrain.sbatch", SLURM / "sweep-worker.sbatch"
VENV_BIN = Path(sys.executable).parent  # torchrun and jbot of the environment running the tests
SMALL = ["data.n_train=320", "data.n_val=100", "data.n_test=100", "tracking.log_system_metrics=false",
         "runtime.device=cpu"]
FAST_FT = [*SMALL, "finetune.epochs=1", "finetune.batch_size=128"]
FAKE_SCONTROL = '#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n'



def _block(text: str, name: str) -> str:
    """The lines between ``# ---- <name>`` and ``# ---- end of <name>``."""
    match = re.search(rf"^# ---- {re.escape(name)}\b.*?$\n(.*?)^# ---- end of {re.escape(name)} ----$", text,
                      re.M | re.S)
    assert match, f"no marked block {name!r}"
    return match.group(1)


def _sbatch(script: Path) -> list[str]:
    """The options of the script's ``#SBATCH`` lines (comments after them left out)."""
    return [line.split()[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory, _empty_store: Path) -> str:
    """One SQLite MLflow store for this module's runs (a copy of the session's empty one: creating its tables takes
    seconds)."""
    db = tmp_path_factory.mktemp("slurm-mlruns") / "mlflow.db"
    shutil.copyfile(_empty_store, db)
    return f"sqlite:///{db}"


def _env(extra_path: Path | None = None, **values: str) -> dict[str, str]:
    """The test's environment without MLflow and SLURM variables, the venv first on PATH, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLURM_", "PET_", "TORCHELASTIC_"))}
    env["PATH"] = os.pathsep.join([*([str(extra_path)] if extra_path else []), str(VENV_BIN), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **values}


def _argv(script: Path, env: dict[str, str], extra: list[str]) -> list[str]:
    """The script's jbot command line as bash expands it with ``env`` (``extra`` = the script's arguments)."""
    text = script.read_text()
    code = _block(text, "settings") + _block(text, "jbot command line") + 'printf "%s\\0" "${JBOT[@]}"\n'
    out = subprocess.run(["bash", "-c", code, script.name, *extra], env=env, capture_output=True, timeout=30,
                         check=True)
    return out.stdout.decode().split("\0")[:-1]


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``cmd`` in its own session, its output in ``log``; its whole process group is killed if still there."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float = 300) -> tuple[int, str]:
    with _process(cmd, env, cwd, log) as proc:
        rc = proc.wait(timeout=timeout)
    return rc, log.read_text()


def _wait_for(path: Path, text: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not (path.is_file() and text in path.read_text()):
        assert proc.poll() is None, f"exited with {proc.returncode} before {text!r}:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {seconds:.0f} s:\n{path.read_text()}"
        time.sleep(0.05)


def _fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A folder of executable scripts (name -> text) to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


# ------------------------------------------------------------------------------------------ the scripts' text


def test_scripts_parse_and_ask_slurm_for_the_right_things(tmp_path: Path) -> None:
    for script in (PRETRAIN, SWEEP):
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        assert "--requeue" in _sbatch(script) and any(o.startswith("--signal=B:USR1@") for o in _sbatch(script))
    assert "--array=0-7" in _sbatch(SWEEP) and "--signal=B:USR1@120" in _sbatch(PRETRAIN)

    env = _env(CONFIG="jbot-s", DATA="/d", OUT="/o", NPROC="4", TRACKING_URI="http://m:5000")
    argv = _argv(PRETRAIN, env, ["--set", "pretrain.epochs=9"])
    # the README's form of data-parallel pre-training: torchrun ... $(which jbot) pretrain ...
    assert argv == ["torchrun", "--standalone", "--nproc-per-node", "4", str(VENV_BIN / "jbot"), "pretrain",
                    "--config", "jbot-s", "--data", "/d", "--preset", "5class", "--out", "/o", "--resume", "auto",
                    "--tracking-uri", "http://m:5000", "--set", "pretrain.epochs=9"]
    env = _env(MODEL="m.pt", DATA="/d", TRIALS="5", STUDY="s", JOURNAL="/j/s.log", TRACKING_URI="http://m")
    argv = _argv(SWEEP, env, [])
    assert argv[:3] == ["jbot", "sweep", "finetune"] and argv[argv.index("--storage") + 1] == "/j/s.log"
    env["OPTUNA_DB"] = "postgresql://jbot@db/optuna"
    assert _argv(SWEEP, env, [])[argv.index("--storage") + 1] == "postgresql://jbot@db/optuna"


# ------------------------------------------------------------------------------------------ requeue logic


@pytest.mark.integration
def test_requeue_logic_with_stand_ins(tmp_path: Path) -> None:
    """The warning (SIGUSR1 to the batch shell) reaches the launcher as the script says (SIGTERM to torchrun,
    SIGUSR1 to a sweep worker); the job is requeued only after it, and only inside a SLURM job."""
    fake = _fake_bin(tmp_path, scontrol=FAKE_SCONTROL, torchrun=(  # torchrun exits 1 when its ranks failed
        '#!/bin/bash\ntrap \'echo "got TERM" >> "$STUB_LOG"; exit 1\' TERM\necho "started $*" >> "$STUB_LOG"\n'
        'while :; do sleep 0.05; done\n'), jbot=(
        '#!/bin/bash\ntrap \'echo "got USR1" >> "$STUB_LOG"; exit 138\' USR1\necho "started $*" >> "$STUB_LOG"\n'
        'while :; do sleep 0.05; done\n'))
    for script, got, rc in ((PRETRAIN, "got TERM", 1), (SWEEP, "got USR1", 138)):
        for job_id in ("4242", None):
            case = tmp_path / f"{script.stem}-{job_id}"
            case.mkdir()
            stub_log, scontrol_log = case / "stub.log", case / "scontrol.log"
            env = _env(fake, STUB_LOG=str(stub_log), SCONTROL_LOG=str(scontrol_log), DATA=str(case),
                       OUT=str(case / "out"), JOURNAL=str(case / "sweeps" / "s.log"), TRACKING_URI="http://m",
                       **({"SLURM_JOB_ID": job_id} if job_id else {}))
            with _process(["bash", str(script), "--set", "x.y=1"], env, case, case / "job.log") as proc:
                _wait_for(stub_log, "started", proc, seconds=30)
                os.kill(proc.pid, signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@...` does
                assert proc.wait(timeout=30) == rc, (case / "job.log").read_text()
            assert got in stub_log.read_text() and "--set x.y=1" in stub_log.read_text()
            if job_id:
                assert scontrol_log.read_text() == f"requeue {job_id}\n"
            else:
                assert not scontrol_log.exists() and "not inside a SLURM job" in (case / "job.log").read_text()


# ------------------------------------------------------------------------------------------ real runs


@pytest.mark.integration
def test_pretrain_line_first_start_then_requeue_after_the_end(fake_data: Path, mlflow_uri: str,
                                                             tmp_path: Path) -> None:
    """The extracted line trains (a fresh start: no checkpoint yet); the whole script then starts again as a
    requeued job would, with the same line: "nothing to do", exit 0, and no requeue."""
    out, scontrol_log = tmp_path / "runs" / "x", tmp_path / "scontrol.log"
    env = _env(_fake_bin(tmp_path, scontrol=FAKE_SCONTROL), SCONTROL_LOG=str(scontrol_log),
               CONFIG="jbot-s", DATA=str(fake_data), PRESET="5class", OUT=str(out), NPROC="1",
               TRACKING_URI=mlflow_uri)
    extra = _sets([*TINY, *SMALL])
    argv = _argv(PRETRAIN, env, extra)
    assert argv[:4] == ["torchrun", "--standalone", "--nproc-per-node", "1"] and "auto" in argv

    rc, text = _run(argv, env, tmp_path, tmp_path / "job1.log")
    assert rc == 0 and "epoch 3/3" in text, text
    assert (out / "checkpoint.pt").is_file()

    rc, text = _run(["bash", str(PRETRAIN), *extra], {**env, "SLURM_JOB_ID": "77"}, tmp_path, tmp_path / "job2.log")
    assert rc == 0 and "has trained all 3 epochs: nothing to do" in text, text
    assert not scontrol_log.exists(), "a job that ends normally is not requeued"


@pytest.mark.integration
def test_two_sweep_workers_share_a_journal_file_study(fake_data: Path, mlflow_uri: str, tmp_path: Path) -> None:
    """Two array tasks one after the other on one journal-file study: 2 COMPLETE trials in all; the first runs
    the whole script (a normal end: no requeue), the second its extracted jbot line."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal, scontrol_log = tmp_path / "shared" / "sweeps" / "study.log", tmp_path / "scontrol.log"
    env = _env(_fake_bin(tmp_path, scontrol=FAKE_SCONTROL), SCONTROL_LOG=str(scontrol_log),
               MODEL=str(tiny_checkpoint(tmp_path / "enc.pt", 0)), DATA=str(fake_data), FRACTION="1.0", TRIALS="2",
               STUDY="slurm-test", JOURNAL=str(journal), TRACKING_URI=mlflow_uri)
    extra = _sets(FAST_FT)

    rc, text = _run(["bash", str(SWEEP), *extra], {**env, "SLURM_JOB_ID": "91", "SLURM_ARRAY_TASK_ID": "0"},
                    tmp_path, tmp_path / "task0.log")
    assert rc == 0, text
    assert journal.is_file() and not scontrol_log.exists()
    argv = _argv(SWEEP, env, extra)
    assert argv[:3] == ["jbot", "sweep", "finetune"]
    rc, text = _run(argv, env, tmp_path, tmp_path / "task1.log")
    assert rc == 0, text

    study = optuna.load_study(study_name="slurm-test", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2, states
