"""The GPU run's scripts cannot rot while no GPU is lent: run.sh's dry run on the CPU (every part, tiny sizes),
prepare.sh's wheels (downloaded, installed offline, imported by a Python 3.12 where one is here), the check of a
carried set, and the two lists the run depends on (the files holding gpu-marked tests; what its imports need
against what the GPU machine has)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import PROJECT_ROOT

GPU = PROJECT_ROOT / "benchmarks" / "gpu"
RUN_FILES = ("env.txt", "pytest.txt", "ddp.json", "matrix.json", "profile.txt", "pretrain.json", "summary.json",
             "run.log")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@pytest.mark.generate
def test_the_dry_run_measures_every_part(tmp_path: Path) -> None:
    """run.sh --device cpu --tiny: every part runs and leaves its file, the eight files the device tool brings
    back; the CUDA-only settings say so instead of failing."""
    pytest.importorskip("pythia8mc")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "not-this")}
    proc = subprocess.run(["bash", str(GPU / "run.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                           "--budget", "240"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
    summary = json.loads((out / "summary.json").read_text())
    assert {p["part"]: p["status"] for p in summary["parts"]} == dict.fromkeys(
        ("env", "generate", "pytest", "ddp", "matrix", "pretrain"), "ok"), summary["parts"]
    assert [v["what"] for v in summary["verdicts"]][:4] == [
        "jBOT-B pre-training, batch 8192", "jBOT-B pre-training, batch 1024", "jBOT-S pre-training, batch 8192",
        "jBOT-S embedding, bf16, batch 16384"]
    assert summary["ddp_matches"] is True
    assert re.search(r"\d+ skipped.*\| 1 passed", summary["pytest"]), summary["pytest"]  # no CUDA: gpu tests skip

    matrix = json.loads((out / "matrix.json").read_text())
    assert [(r["mode"], r["status"].split(":")[0]) for r in matrix["rows"]] == [
        ("graphs", "skipped"), ("eager", "ok"), ("compile", "ok")]
    assert all(r["jets_per_s"] > 0 and r["beside_generation"] in (True, False) for r in matrix["rows"][1:])
    assert [r["status"] for r in matrix["embed"]] == ["ok"] * 3
    ddp = json.loads((out / "ddp.json").read_text())
    assert ddp["backend"] == "gloo" and [r["ddp"] for r in ddp["runs"]] == [False, True]
    pretrain = json.loads((out / "pretrain.json").read_text())
    assert pretrain["epochs_done"] == 3 and 0 <= pretrain["knn"] <= 1 and pretrain["generation"]["total"] == 500
    assert summary["verdicts"][-1]["setting"].startswith("measured: 3 epochs run on 350 jets")
    assert "ms per step" in (out / "profile.txt").read_text()
    assert "nvidia-smi:" in (out / "env.txt").read_text()
    log = (out / "run.log").read_text()
    seconds = int(re.search(r"run.sh: (\d+) s in all", proc.stdout).group(1))  # type: ignore[union-attr]
    assert seconds < 240 and "=== pretrain: exit 0" in log
    assert not (tmp_path / "not-this").exists()  # --out wins over $OUT


def test_every_gpu_test_is_in_the_run() -> None:
    """The run's pytest part names files, not the whole suite (the GPU machine has no MLflow to collect the rest
    with): every file with a gpu-marked test must be among them."""
    listed = re.search(r'GPU_TESTS="([^"]+)"', (GPU / "run.sh").read_text())
    assert listed is not None
    marked = {str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "tests").rglob("*.py")
              if "mark.gpu" in p.read_text() and p.name != Path(__file__).name}
    assert marked and marked <= set(listed.group(1).split()), marked


def test_the_gpu_run_imports_only_what_the_gpu_machine_has() -> None:
    """bench.py and the gpu tests, imported in a fresh process: every distribution they load is on the GPU
    machine's image or carried (wheels.txt). An MLflow import creeping into the engine fails here, not there."""
    code = """
import importlib.metadata as md, sys, json
sys.argv = ["x"]
before = set(sys.modules)
import runpy
runpy.run_path("benchmarks/gpu/bench.py", run_name="not_main")
import tests.train.test_gpu, tests.train.test_fast_step, jbot.data.generate, jbot.data.stream
import fastjet, pythia8mc
dists = md.packages_distributions()
names = {d for m in set(sys.modules) - before for d in dists.get(m.split(".")[0], [])}
print(json.dumps(sorted(names)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = load("check_wheels")
    have = check.image() | set(check.pins())
    loaded = {check.canonicalize_name(n) for n in json.loads(proc.stdout.splitlines()[-1])}
    # awkward imports the importlib-metadata backport (and so lazy-importer) on Python < 3.12 only; the GPU
    # machine's Python is 3.12
    missing = sorted(loaded - have - {"jbot-hep"} - ({"importlib-metadata", "lazy-importer"}
                                                     if sys.version_info < (3, 12) else set()))
    assert not missing, f"the GPU run imports {missing}: carry them (wheels.txt) or drop the import"
    assert {"torch", "pydantic", "numpy", "h5py"} <= loaded


def _wheel(folder: Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any") -> None:
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          *[f"Requires-Dist: {r}" for r in requires]])
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta + "\n")


def test_the_wheel_check_names_every_problem(tmp_path: Path) -> None:
    check = load("check_wheels")
    pins = check.pins()
    for name, version in pins.items():  # the pinned set, as prepare.sh leaves it, but for three defects
        if name in ("vector", "awkward-cpp"):
            continue
        requires = ["numpy>=1.2", "importlib-metadata; python_version < '3.12'", "pytest; extra == 'test'"]
        if name == "fastjet":
            requires.append("mlflow>=3")  # on neither side
        if name == "awkward":
            requires.append("awkward-cpp==99")  # another version than carried
        _wheel(tmp_path, name, str(version), requires)
    _wheel(tmp_path, "vector", "0.1", [])  # another version than pinned
    _wheel(tmp_path, "awkward-cpp", str(pins["awkward-cpp"]), [], tag="cp311-cp311-manylinux_2_17_x86_64")
    _wheel(tmp_path, "optuna", "4.0", [])  # not pinned
    found = check.problems(tmp_path, 56.0)
    assert sorted(found) == sorted([
        f"awkward-{pins['awkward']}-py3-none-any.whl needs awkward-cpp==99, the carried awkward-cpp is "
        f"{pins['awkward-cpp']}",
        "awkward_cpp-57-cp311-cp311-manylinux_2_17_x86_64.whl: not built for CPython 3.12 on manylinux x86-64",
        f"fastjet-{pins['fastjet']}-py3-none-any.whl needs mlflow>=3: neither carried nor on the GPU machine's image",
        "optuna: not in wheels.txt (remove optuna-4.0-py3-none-any.whl)",
        f"vector: 0.1 carried, wheels.txt pins {pins['vector']}"]), found
    assert check.problems(tmp_path, 0.001)[-1].endswith("MiB, over 0.001 MiB (the device tool carries 64 MiB a call)")


@pytest.mark.integration
def test_prepare_carries_a_set_that_installs_and_imports(tmp_path: Path) -> None:
    """prepare.sh from PyPI into a folder of its own: the pinned wheels, COMMIT, the offline install; where a
    Python 3.12 is here, the import check (Pythia's settings found through PYTHIA8DATA, as run.sh sets it)."""
    dest = tmp_path / "whl"
    (tmp_path / "whl").mkdir()
    _wheel(dest, "optuna", "4.0", [])  # a stale wheel: removed
    proc = subprocess.run(["bash", str(GPU / "prepare.sh"), "--dest", str(dest)], cwd=tmp_path,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check = load("check_wheels")
    assert not check.problems(dest, 56.0)
    assert "removing optuna-4.0" in proc.stdout and "installs offline into a fresh --target folder" in proc.stdout
    assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted changes)?\n", (dest / "COMMIT").read_text())
    assert "imports the carried set" in proc.stdout or "no Python 3.12 here" in proc.stdout


def test_the_matrix_measures_the_targets_first() -> None:
    bench = load("bench")
    plan = bench.groups(["S", "B"], [1024, 8192], ["fp32", "bf16"])
    assert plan[:4] == [("B", 8192, "bf16"), ("B", 1024, "bf16"), ("S", 8192, "bf16"), ("S", 1024, "bf16")]
    assert len(plan) == 8 and {p[2] for p in plan[4:]} == {"fp32"}
    verdicts = bench.matrix_verdicts({"rows": [
        {"size": "B", "batch": 8192, "precision": "bf16", "mode": "graphs", "status": "ok", "jets_per_s": 160_000},
        {"size": "B", "batch": 8192, "precision": "bf16", "mode": "eager", "status": "ok", "jets_per_s": 40_000},
        {"size": "B", "batch": 1024, "precision": "bf16", "mode": "graphs", "status": "failed: x"}],
        "embed": [{"name": "encoder bf16 eager", "status": "ok", "jets_per_s": 1_000_000}]})
    assert [(v["met"], v["measured"]) for v in verdicts] == [(True, 160_000), (False, None), (False, None),
                                                            (False, 1_000_000)]
    assert verdicts[0]["setting"] == "bf16 graphs"
    eager_only = bench.matrix_verdicts({"rows": [
        {"size": "B", "batch": 8192, "precision": "bf16", "mode": "eager", "status": "ok", "jets_per_s": 40_000}],
        "embed": []})
    assert eager_only[0]["setting"] == "bf16 eager; compile + graph not measured"


@pytest.mark.integration
@pytest.mark.generate
def test_a_stopped_run_ends_its_parts_and_removes_its_scratch(tmp_path: Path) -> None:
    """SIGTERM to run.sh in the middle (generation in the background, a part in front): every part's processes end,
    the scratch folder (jets, checkpoints, the installed wheels) is gone, the files written so far stay."""
    pytest.importorskip("pythia8mc")
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(["bash", str(GPU / "run.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                             "--budget", "240", "--jets-per-class", "100000"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "=== pytest (" not in ((out / "run.log").read_text() if (out / "run.log").exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach its pytest part"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output
    assert "=== stopped by SIGTERM" in (out / "run.log").read_text()
    assert list(scratch.iterdir()) == [], list(scratch.iterdir())
    assert (out / "env.txt").exists()
    left = subprocess.run(["pgrep", "-f", str(scratch)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the run still running: {left}"
