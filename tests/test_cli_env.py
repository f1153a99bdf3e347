"""What a user sees around the commands: one tracking store per command (also when it is named only in a YAML
config), output with no third-party log lines or warnings, error exits that load nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.conftest import KERAS_FIXTURES, TINY, NewStore, write_fake_folder

runner = CliRunner()
JBOT = str(Path(sys.executable).parent / "jbot")
KERAS = KERAS_FIXTURES
SIZES = {"n_train": 200, "n_val": 40, "n_test": 100}


def _tree(items: list[str]) -> dict:
    tree: dict = {}
    for item in items:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        tree.setdefault(section, {})[field] = yaml.safe_load(value)
    return tree


@pytest.mark.integration
def test_tracking_uri_only_in_the_yaml_config_is_used_by_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     new_store: NewStore) -> None:
    """The whole chain on one store named only in the config: pretrain (q+g) -> register best -> probe, finetune,
    anomaly (its report) and embed from the registry alias, and an import registered beside."""
    from jbot.cli import app

    store_db = Path(new_store(tmp_path / "configured").removeprefix("sqlite:///"))
    elsewhere = tmp_path / "elsewhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")  # the config must win over it
    monkeypatch.chdir(tmp_path)  # and over the embedded store of the working folder
    data = write_fake_folder(tmp_path / "jets", 240)
    tree = _tree(TINY + ["anomaly.reference_size=150", "anomaly.gmm_components=2", "anomaly.knn_k=5",
                         "anomaly.cosine_k=5", "finetune.epochs=1", "finetune.batch_size=64",
                         "evaluate.n_folds=2", "probe.silhouette_samples=100", "tracking.log_system_metrics=false"])
    tree["data"] = {"dir": str(data), **SIZES}
    tree["tracking"]["uri"] = f"sqlite:///{store_db}"
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(tree))
    c = ["--config", str(config)]

    def ok(*args: str) -> str:
        result = runner.invoke(app, [*args, *c])
        assert result.exit_code == 0, f"{args}: {result.output}"
        return result.output

    ok("pretrain", "--preset", "qg", "--out", str(tmp_path / "pt"))
    ok("register", "best", "--experiment", "jbot-pretrain", "--metric", "val/knn_acc")
    champion = "models:/jbot-encoder@champion"
    ok("probe", "--model", champion)
    ok("finetune", "--model", champion, "--out", str(tmp_path / "ft"))
    scored = ok("anomaly", "--model", champion, "--out", str(tmp_path / "report"))
    assert "mahalanobis" in scored and "0.836" in scored  # the published k-NN Z AUC beside ours
    report = (tmp_path / "report" / "anomaly_report.html").read_text()
    assert champion in report and "upstream_model" in report and "plotly" in report.lower()
    assert (tmp_path / "report" / "anomaly_metrics.json").is_file()
    x = np.zeros((3, 30, 4), np.float32)
    x[:, :3, 2], x[:, :3, 3] = 0.3, 1.0
    np.savez(tmp_path / "jets.npz", x=x)
    ok("embed", "--model", champion, "--input", str(tmp_path / "jets.npz"), "--out", str(tmp_path / "emb.npz"))
    ok("import-keras", str(KERAS / "all_backbone_pretrain_32_4_2.weights.h5"), "--out", str(tmp_path / "k.pt"),
       "--register", "jbot-imported")
    assert "jbot-imported" not in ok("register", "list")  # lists jbot-encoder of the configured store
    assert "champion" in ok("register", "list", "--name", "jbot-encoder")

    assert not elsewhere.exists() and not (tmp_path / "mlruns").exists(), "no other store was touched"
    client = MlflowClient(f"sqlite:///{store_db}")
    for command in ("pretrain", "probe", "finetune", "anomaly", "import"):
        exp = client.get_experiment_by_name(f"jbot-{command}")
        assert exp is not None, command
        (run,) = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["tracking.uri"] == f"sqlite:///{store_db}"
    names = {c: client.search_runs([client.get_experiment_by_name(f"jbot-{c}").experiment_id])[0].info.run_name
             for c in ("pretrain", "probe", "finetune", "anomaly", "import")}
    assert names == {"pretrain": "pretrain-D16L1-qg-e3", "probe": "probe-5class", "finetune": "pretrained-100%-5class",
                     "anomaly": "anomaly-knn", "import": "import-all_backbone_pretrain_32_4_2"}
    pre = client.search_runs([client.get_experiment_by_name("jbot-pretrain").experiment_id])[0]
    (dataset,) = pre.inputs.dataset_inputs
    assert dataset.dataset.name == "jets (qg)" and dataset.dataset.digest == pre.data.tags["jbot.data_fingerprint"][:16]
    assert pre.data.tags.get("mlflow.source.git.commit") == pre.data.tags["jbot.git_commit"] or \
        pre.data.tags["jbot.git_commit"] == "unknown"
    assert client.get_experiment_by_name("jbot-probe").tags["mlflow.experimentKind"] == "custom_model_development"
    assert pre.data.tags["mlflow.note.content"].startswith("jBOT pre-training (D16L1")
    assert pre.data.tags["jbot.model_uri"] in {m.model_uri for m in client.search_logged_models(
        [pre.info.experiment_id]) if m.name == "jbot-encoder"}
    assert "register best" in client.get_registered_model("jbot-encoder").description
    assert "val/knn_acc" in client.get_model_version("jbot-encoder", "1").description
    probe_run = client.search_runs([client.get_experiment_by_name("jbot-probe").experiment_id])[0]
    assert probe_run.data.tags["jbot.upstream_model"] == "jbot-encoder/1", "the registry lookup used the same store"
    assert str(client.get_model_version_by_alias("jbot-encoder", "champion").version) == "1"
    assert client.search_model_versions("name = 'jbot-imported'")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "JBOT_"))}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    return env


@pytest.mark.integration
def test_probe_and_import_print_no_third_party_lines_or_warnings(tmp_path: Path) -> None:
    from tests.conftest import tiny_checkpoint

    data = write_fake_folder(tmp_path / "jets", 240)
    encoder = tiny_checkpoint(tmp_path / "enc.pt", 0)
    sets = [a for k, v in SIZES.items() for a in ("--set", f"data.{k}={v}")]
    commands = {
        # system metrics on (the default): MLflow's monitor logs INFO lines unless jbot quiets it
        "probe": [JBOT, "probe", "--model", str(encoder), "--data", str(data), *sets],
        "import-keras": [JBOT, "import-keras", str(KERAS / "all_backbone_ft_64_6_4.weights.h5"), "--classifier",
                         str(KERAS / "all_mlp_ft_64_6_4.weights.h5"), "--out", str(tmp_path / "ft.pt"),
                         "--register", "jbot-imported"],
    }
    for name, cmd in commands.items():
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == "", f"{name} wrote to stderr:\n{proc.stderr}"
        for marker in (" INFO ", " WARNING ", "Warning:", "mlflow.", "Successfully registered", "Created version"):
            assert marker not in proc.stdout, f"{name} printed {marker!r}:\n{proc.stdout}"
    verbose = subprocess.run([JBOT, "--verbose", *commands["probe"][1:]], cwd=tmp_path, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "INFO mlflow" in verbose.stderr, "--verbose shows MLflow's own lines"


@pytest.mark.parametrize("args", [
    ["pretrain", "--data", "no-such-folder"],
    ["probe", "--model", "no-such.pt"],
    ["probe", "--model", "runs:/x/model", "--data", "no-such-folder"],
    ["sweep", "finetune", "--model", "no-such.pt", "--trials", "2"],
    ["anomaly", "--model", "models:/jbot-encoder@champion", "--data", "no-such-folder"],
    ["embed", "--model", "no-such.pt", "--input", "x.hdf5", "--out", "y.npz"],
])
def test_error_exits_load_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    """Bad input is reported before torch, MLflow or Optuna is imported (so the error comes at once)."""
    script = ("import sys\nfrom typer.main import get_command\nfrom jbot.cli import app\n"
              f"code = get_command(app).main({args!r}, standalone_mode=False)\n"
              "heavy = sorted(m for m in ('torch', 'mlflow', 'optuna', 'sklearn') if m in sys.modules)\n"
              "print('EXIT', code, 'HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert "EXIT 2 HEAVY []" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") <= 2, proc.stderr


def test_help_is_plain_and_self_contained() -> None:
    """No typer type labels (<bool>, <list[str]>) and no references to files a user does not have."""
    from typer.main import get_command

    from jbot.cli import app

    group = get_command(app)
    commands = [[]] + [[name] for name in group.commands]  # type: ignore[attr-defined]
    commands += [[g, sub] for g in ("data", "register", "sweep", "config")
                 for sub in group.commands[g].commands]  # type: ignore[attr-defined]
    for args in commands:
        text = runner.invoke(app, [*args, "--help"], terminal_width=160).output
        assert "Usage:" in text, args
        for bad in ("<bool>", "<str>", "<list[str]>", "<path>", "SPEC"):
            assert bad not in text, f"jbot {' '.join(args)} --help shows {bad!r}"
