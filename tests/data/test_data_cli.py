from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from jbot.cli import app
from jbot.data.info import summarize

runner = CliRunner()


def test_info_prints_and_writes_html(fake_data: Path, tmp_path: Path) -> None:
    html = tmp_path / "dist.html"
    result = runner.invoke(app, ["data", "info", str(fake_data), "--html", str(html)])
    assert result.exit_code == 0, result.output
    assert "400" in result.output and "W" in result.output
    text = html.read_text()
    assert "plotly" in text.lower() and len(text) > 1_000_000  # plotly.js embedded: renders offline
    summary = summarize(fake_data)
    assert summary["t"]["mass"]["median"] > summary["q"]["mass"]["median"]


def test_info_on_bad_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2 and "no class files" in result.output
    (tmp_path / "q.hdf5").write_bytes(b"garbage")
    result = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert result.exit_code == 2 and "not a readable HDF5 file" in result.output
