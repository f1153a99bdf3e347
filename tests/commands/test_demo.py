"""`jbot demo` end to end on a tiny configuration: the reproduction with a verdict per claim, the background
encoder registered as @champion from that reproduction, and the anomaly report from the registry alias."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from jbot.cli import app
from tests.commands.test_reproduce import QUICK
from tests.conftest import NewStore, write_fake_folder

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_demo_prints_a_verdict_per_claim_and_reports_from_the_registry(tmp_path: Path, new_store: NewStore) -> None:
    write_fake_folder(tmp_path / "demo" / "jets", 400)  # present: nothing is generated
    store = new_store(tmp_path / "mlruns")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--tracking-uri", store,
                                 *[a for item in QUICK for a in ("--set", item)]])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "using the jets already in" in out
    for claim in ("pre-training gain:", "fine-tuned above from scratch with 10%",
                  "fine-tuned above from scratch with 100%", "top tagging, fine-tuned", "anomaly (k-NN score"):
        assert sum(f"{verdict}: {claim}" in out for verdict in ("holds", "holds, within error", "does not hold")) == 1, claim
    assert (tmp_path / "demo" / "reproduce" / "reproduce.html").is_file()
    assert (tmp_path / "demo" / "anomaly").is_dir()

    client = MlflowClient(store)
    version = client.get_model_version_by_alias("jbot-encoder", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["data.preset"] == "qg"  # the background encoder of the reproduction
    parent = run.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["jbot.role"] == "reproduce-parent"
