"""A non-editable install of jbot's wheel, run from an unrelated folder: the package finds its own files, puts its
stores under the working folder and writes nothing inside the installed package.

The wheel is built from this checkout and installed without dependencies into a fresh virtual environment that
sees the test environment's packages through a ``.pth`` line (offline and quick); jbot itself comes only from the
wheel, never from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration
SMALL = ["pretrain.epochs=1", "pretrain.batch_size=64", "pretrain.warmup_epochs=1", "pretrain.knn_every=1",
         "pretrain.knn_val_size=100", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_proj=8",
         "data.n_train=400", "data.n_val=100", "data.n_test=200", "tracking.log_system_metrics=false"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv, installed package folder)."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    source = root / "src"  # what the wheel is built from (as the Dockerfile copies it): the checkout stays clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "jbot", source / "jbot", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
          str(root / "dist"), str(source)], root, env)
    (wheel,) = (root / "dist").glob("jbot_hep-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     root, env).strip())
    # the dependencies (torch, mlflow, ...) of this environment; a .pth line adds a folder without running the
    # .pth files inside it, so the checkout's editable jbot is not seen
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps",
          str(wheel)], root, env)
    return venv, site / "jbot"


def test_installed_wheel_runs_from_an_unrelated_folder(installed: tuple[Path, Path], fake_data: Path,
                                                       tmp_path: Path) -> None:
    venv, package = installed
    assert (package / "configs" / "jbot-b.yaml").is_file() and (package / "configs" / "sweeps" / "finetune.yaml").is_file()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "JBOT_HOME", "PYTHONPATH")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    before = _files(package)
    jbot = str(venv / "bin" / "jbot")

    where = _run([str(venv / "bin" / "python"), "-c", "import jbot; print(jbot.__file__)"], work, env)
    assert Path(where.strip()).parent == package, "jbot must come from the wheel, not the checkout"
    shown = _run([jbot, "config", "show"], work, env)
    assert "d_model: 32" in shown
    assert "d_model: 64" in _run([jbot, "config", "show", "--config", "jbot-b"], work, env)
    _run([str(venv / "bin" / "python"), "-c", "from jbot.sweeps.spaces import load_space\n"
          "for k in ('finetune', 'anomaly', 'pretrain'): load_space(k)"], work, env)

    sets = [a for item in SMALL for a in ("--set", item)]
    out = _run([jbot, "pretrain", "--data", str(fake_data), "--out", "runs/pt", *sets], work, env)
    assert "val/knn_acc" in out
    assert (work / "mlruns" / "mlflow.db").is_file(), "the embedded store lives under the working folder"
    assert (work / "mlruns" / "artifacts").is_dir() and (work / "runs" / "pt" / "checkpoint.pt").is_file()
    assert _files(package) == before, "nothing is written inside the installed package"
