"""Hostile input, each case as a user meets it: YAML anchor bombs and duplicate keys, huge integers, a binary file
given as the config, symbolic links in the data folder and a file given as the folder, sweeps asked for no trials
or for an objective no trial reports, Optuna's own warning lines, and anomaly reports of an encoder that saw the
signal classes. Each ends with one ``error:`` line (exit code 2) or one ``note:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import ConfigError
from tests.conftest import TINY, NewStore, tiny_checkpoint, write_fake_folder
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import set_args as _sets

runner = CliRunner()
JBOT = str(Path(sys.executable).parent / "jbot")
FAST_FT = ["data.n_train=400", "data.n_val=100", "data.n_test=200", "finetune.epochs=1", "finetune.batch_size=128",
           "tracking.log_system_metrics=false"]




def _bomb(levels: int = 9) -> str:
    """A flow-style YAML "billion laughs": each level a list of 9 aliases of the level below (9**9 values)."""
    text = "&a1 [" + ",".join(["1"] * 9) + "]"
    for i in range(2, levels + 1):
        text = f"&a{i} [{text}," + ",".join([f"*a{i - 1}"] * 8) + "]"
    return text


# ------------------------------------------------------------------------------------------ A. YAML documents


@pytest.mark.integration
@pytest.mark.parametrize("where", ["--config", "--set"])
def test_anchor_bomb_is_refused_at_once(tmp_path: Path, where: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(f"pretrain:\n  epochs: {_bomb()}\n")
    args = ["--config", str(path)] if where == "--config" else ["--set", f"pretrain.epochs={_bomb()}"]
    start = time.monotonic()
    done = subprocess.run([JBOT, "config", "show", *args], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 20, "an anchor bomb must not be expanded"
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert (str(path) if where == "--config" else "--set pretrain.epochs") in line
    assert "expands to more than 100,000 values" in line


def test_a_long_bad_value_is_shown_as_an_excerpt(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text("pretrain:\n  epochs: [" + ",".join(["1"] * 50_000) + "]\n")
    result = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "pretrain.epochs" in line and "got [1, 1," in line and len(line) < 400, line[:500]


def test_duplicate_keys_are_an_error_naming_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("pretrain:\n  epochs: 5\n  epochs: 7\n")
    result = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 2
    assert _one_error_line(result.output) == f"error: {path}: duplicate key 'epochs' in one mapping (line 3)"
    merged = tmp_path / "merge.yaml"  # a key given again beside a merge (<<: *base) is no duplicate
    merged.write_text("pretrain: &p {epochs: 3}\nfinetune:\n  <<: *p\n  epochs: 4\n")
    shown = runner.invoke(app, ["config", "show", "--config", str(merged)])
    assert shown.exit_code == 0 and "epochs: 4" in shown.output, shown.output
    from jbot.sweeps.spaces import load_space

    space = tmp_path / "space.yaml"
    space.write_text("objective: val/best_acc\nobjective: val/acc\nparams: {finetune.lr: {type: float, low: 0.1, "
                     "high: 0.2}}\n")
    with pytest.raises(ConfigError, match=r"space.yaml: duplicate key 'objective' in one mapping \(line 2\)"):
        load_space(space)


# ------------------------------------------------------------------------------------- B. integer bounds


@pytest.mark.parametrize("override", ["pretrain.epochs=100000000000000000000000", "finetune.batch_size=1099511627776",
                                      "model.n_particles=1000000000000", "pretrain.seed=18446744073709551616",
                                      "anomaly.knn_k=10000000000"])
def test_huge_integers_are_refused_naming_the_field(override: str) -> None:
    result = runner.invoke(app, ["config", "show", "--set", override])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert override.split("=")[0] in line and "less than or equal to" in line, line


# -------------------------------------------------------------------------------------- C. binary configs


def test_a_binary_file_as_config_is_one_line(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(128, 256)) * 16)
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, checkpoint)
    for path in (noise, checkpoint):
        for command in (["config", "show"], ["pretrain"]):
            result = runner.invoke(app, [*command, "--config", str(path)])
            assert result.exit_code == 2, result.output
            assert f"{path}: not a text YAML file" in _one_error_line(result.output)


# ------------------------------------------------------------------------------------------ D. data folders


def test_symbolic_links_in_the_data_folder_say_what_they_are(tmp_path: Path) -> None:
    folder = write_fake_folder(tmp_path / "jets", 20)
    (folder / "q.hdf5").unlink()
    os.symlink("q.hdf5", folder / "q.hdf5")  # a link to itself
    cases = {"loops (it points to q.hdf5": folder}
    pair = write_fake_folder(tmp_path / "pair", 20)
    (pair / "g.hdf5").unlink()
    os.symlink("other.hdf5", pair / "g.hdf5")  # g -> other -> g
    os.symlink("g.hdf5", pair / "other.hdf5")
    cases["loops (it points to other.hdf5"] = pair
    dangling = write_fake_folder(tmp_path / "dangling", 20)
    (dangling / "t.hdf5").unlink()
    os.symlink(tmp_path / "gone" / "t.hdf5", dangling / "t.hdf5")
    cases[f"points to {tmp_path / 'gone' / 't.hdf5'}, which does not exist"] = dangling
    for expected, data in cases.items():
        for args in (["pretrain", "--data", str(data)], ["data", "info", str(data)]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2, result.output
            line = _one_error_line(result.output)
            assert "is a symbolic link that" in line and expected in line, line
            assert "missing file" not in line


def test_a_file_given_as_the_data_folder(tmp_path: Path) -> None:
    folder = write_fake_folder(tmp_path / "jets", 20)
    for args in (["pretrain", "--data", str(folder / "q.hdf5")], ["data", "info", str(folder / "q.hdf5")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        line = _one_error_line(result.output)
        assert f"{folder / 'q.hdf5'} is a file, not a folder" in line and f"e.g. {folder}" in line, line
        assert "generate" not in line


# ------------------------------------------------------------------------------------------------ E. sweeps


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_a_sweep_needs_at_least_one_trial(fake_data: Path, tmp_path: Path, trials: str) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = runner.invoke(app, ["sweep", "finetune", "--model", str(encoder), "--trials", trials, "--data",
                                 str(fake_data), "--storage", storage, *_sets(FAST_FT)])
    assert result.exit_code == 2
    assert _one_error_line(result.output) == f"error: --trials {trials}: a sweep needs at least 1 trial"
    assert optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize(("kind", "objective", "named"), [
    ("finetune", "test/acc", "val/best_acc, train/best_epoch"),
    ("anomaly", "val/acc_", "val/W/auc, val/W/max_sic, val/Z/auc, val/Z/max_sic, val/t/auc, val/t/max_sic, "
                            "val/combined/auc, val/combined/max_sic, val/combined/auc_decorrelated")])
def test_a_sweep_objective_no_trial_reports_is_refused(fake_data: Path, tmp_path: Path, kind: str, objective: str,
                                                       named: str) -> None:
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    space = tmp_path / "space.yaml"
    space.write_text(f"objective: {objective}\nparams:\n  anomaly.knn_k: {{type: int, low: 5, high: 10}}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = runner.invoke(app, ["sweep", kind, "--model", str(encoder), "--trials", "1", "--data", str(fake_data),
                                 "--space", str(space), "--storage", storage, *_sets(FAST_FT)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert f"search space {space}: objective {objective!r} is not a metric `jbot sweep {kind}` trials report" in line
    assert f"choose from {named}" in line, line
    assert optuna.get_all_study_names(storage) == [], "no trial ran"


@pytest.mark.integration
def test_optuna_warning_lines_only_with_verbose(fake_data: Path, tmp_path: Path, new_store: NewStore) -> None:
    """Trials that fail at once (d_model < n_heads: each parameter alone passes the space check) make Optuna warn."""
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    space = tmp_path / "space.yaml"
    space.write_text("objective: val/best_acc\nparams:\n  model.d_model: {type: categorical, choices: [2]}\n"
                     "  model.n_heads: {type: categorical, choices: [4]}\n")
    args = ["sweep", "finetune", "--model", str(encoder), "--trials", "1", "--data", str(fake_data), "--space",
            str(space), "--tracking-uri", new_store(tmp_path / "mlruns"), *_sets(TINY + FAST_FT)]
    env = {k: v for k, v in os.environ.items() if k != "JBOT_VERBOSE"}
    quiet = subprocess.run([JBOT, *args, "--storage", f"sqlite:///{tmp_path / 'a.db'}"], capture_output=True,
                           text=True, timeout=300, env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "5 failed trials" in quiet.stdout
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("[W ")], quiet.stderr
    loud = subprocess.run([JBOT, "--verbose", *args, "--storage", f"sqlite:///{tmp_path / 'b.db'}"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 0, loud.stderr
    assert "Trial 0 failed with parameters" in loud.stderr


# ----------------------------------------------------------------------------------------------- F. anomaly


def _qg_checkpoint(path: Path) -> Path:
    """As ``tiny_checkpoint``, pre-trained (by its config) on q, g alone."""
    from jbot.config import load_config
    from jbot.model.encoder import JetEncoder
    from jbot.train.checkpoint import save_checkpoint

    cfg = load_config(None, [*TINY, "data.preset=qg"])
    torch.manual_seed(0)
    return save_checkpoint(path, {"kind": "encoder", "config": cfg.model_dump(mode="json"),
                                  "encoder": JetEncoder(cfg.model).state_dict()})


def test_anomaly_notes_an_encoder_that_saw_the_signal_classes(fake_data: Path, tmp_path: Path,
                                                              new_store: NewStore) -> None:
    store = new_store(tmp_path / "store")
    sizes = ["data.n_train=200", "data.n_val=40", "data.n_test=200", "anomaly.reference_size=150",
             "anomaly.gmm_components=2", "anomaly.knn_k=5", "anomaly.cosine_k=5", "evaluate.n_folds=3",
             "tracking.log_system_metrics=false"]
    outcomes = {}
    for name, checkpoint in (("5class", tiny_checkpoint(tmp_path / "five.pt", 0)),
                             ("qg", _qg_checkpoint(tmp_path / "qg.pt"))):
        out = tmp_path / name
        result = runner.invoke(app, ["anomaly", "--model", str(checkpoint), "--data", str(fake_data), "--out",
                                     str(out), "--tracking-uri", store, *_sets(sizes)])
        assert result.exit_code == 0, result.output
        run_id = result.output.split("MLflow run ")[-1].split()[0]
        tags = MlflowClient(store).get_run(run_id).data.tags
        notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
        outcomes[name] = (notes, tags.get("jbot.encoder_saw_signal"), (out / "anomaly_report.html").read_text())
    notes, saw, report = outcomes["5class"]
    assert notes == ["note: this encoder was pre-trained on the 5class preset (q, g, W, Z, t): it saw signal jets "
                     "in training, unlike the paper's unsupervised setting (pre-training on q, g alone) behind "
                     "Table 4's published numbers"]
    assert saw == "true" and "it saw signal jets in training" in report
    notes, saw, report = outcomes["qg"]
    assert notes == [] and saw == "false" and "it saw signal jets" not in report


def test_signal_exposure_of_imported_and_fine_tuned_checkpoints() -> None:
    from jbot.anomaly.report import signal_exposure

    def keras(name: str) -> dict[str, object]:  # what `jbot import-keras` stores (its config says 5class)
        return {"kind": "encoder", "config": {"data": {"preset": "5class"}}, "source": {"backbone": f"w/{name}"}}

    assert signal_exposure(keras("all_backbone_pretrain_128_8_8.weights.h5")) == (
        True, "imported from all_backbone_pretrain_128_8_8.weights.h5, trained on q, g, W, Z, t")
    assert signal_exposure(keras("qg_backbone_pretrain_128_8_8.weights.h5"))[0] is False  # type: ignore[index]
    assert signal_exposure(keras("my_weights.h5")) is None
    assert signal_exposure({"kind": "classifier", "classifier": {}, "class_names": ["q", "g", "t"],
                            "config": {"data": {"preset": "qg"}}}) == (True, "fine-tuned on labelled q, g, t jets")
    assert signal_exposure({"config": {"data": {"preset": "qg", "stream": True}}}) is None
    assert signal_exposure({"config": {"model": {}}}) is None
