"""A logged jbot model runs where jbot is not installed: `mlflow models predict` in a fresh virtual environment that
holds mlflow and torch (and what they depend on) only. jbot travels inside the model as code (``code_paths``)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from jbot.config import load_config
from jbot.evaluate.embed import embed
from jbot.tracking.mlflow import tracked_run
from jbot.tracking.models import log_jbot_model, model_requirements
from jbot.train.checkpoint import load_model
from tests.conftest import fake_jets
from tests.tracking.test_tracking import TINY, tiny_checkpoint

pytestmark = pytest.mark.integration


def _closure(roots: list[str]) -> list[md.Distribution]:
    """The installed distributions ``roots`` need at run time (extras left out), found in this environment."""
    env = {**default_environment(), "extra": ""}
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # an optional dependency this environment lacks
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return list(seen.values())


def fresh_env(root: Path, roots: list[str]) -> Path:
    """A new virtual environment with exactly ``roots`` and their dependencies: this environment's installed files,
    linked (not copied: torch is a gigabyte) into one folder a ``.pth`` line adds. Returns its python."""
    site = root / "site"
    site.mkdir(parents=True)
    for dist in _closure(roots):
        base = Path(str(dist.locate_file("")))
        for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
            if top.startswith("..") or top == "__pycache__" or (site / top).exists():
                continue  # a console script outside site-packages, or a folder two distributions share
            if (base / top).exists():
                (site / top).symlink_to(base / top)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(f"{site}\n")
    return python


def test_mlflow_models_predict_in_a_venv_with_mlflow_and_torch_only(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    cfg = load_config(None, [*TINY, f"tracking.uri={store}"])
    x = fake_jets(6, 2, np.random.default_rng(3))[0]
    checkpoint = tiny_checkpoint(tmp_path / "c.pt", 0)
    with tracked_run(cfg, "pretrain", experiment="model-env"):
        uri = log_jbot_model(checkpoint, x[:2], 16, classifier=False)
    assert [r.split("==")[0] for r in model_requirements()] == ["torch", "mlflow"]

    python = fresh_env(tmp_path / "fresh", ["mlflow", "torch"])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JBOT_HOME")}
    env.update(MLFLOW_TRACKING_URI=store, PYTHONDONTWRITEBYTECODE="1")
    work = tmp_path / "work"  # not the checkout: its jbot must not be importable
    work.mkdir()
    probe = subprocess.run([str(python), "-c", "import mlflow, torch\nfor m in ('jbot', 'h5py', 'typer'):\n"
                            "    try:\n        __import__(m); print(m)\n    except ImportError:\n        pass"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout == "", probe.stdout + probe.stderr  # none of them installed

    (work / "jets.json").write_text(json.dumps({"inputs": x.astype(np.float64).tolist()}))
    out = subprocess.run([str(python), "-m", "mlflow", "models", "predict", "-m", uri, "-i", "jets.json", "-t",
                          "json", "-o", "cls.json", "--env-manager", "local"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    predicted = np.array(json.loads((work / "cls.json").read_text())["predictions"], dtype=np.float32)
    expected = embed(load_model(checkpoint).encoder, x)[0]
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
