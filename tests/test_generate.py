"""Pythia8 + FastJet generation (needs the `generate` extra, which `make test` installs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import GenerateConfig
from jbot.data.generate import generate
from jbot.data.jetnet import read_jetnet

pytest.importorskip("pythia8mc", reason="install the generate extra: pip install 'jbot[generate]'")
pytestmark = pytest.mark.generate


def test_boson_and_top_masses(tmp_path: Path) -> None:
    cfg = GenerateConfig(classes=("w", "z", "t"), jets_per_class=150, chunk_size=75, workers=2, seed=3)
    files = generate(cfg, tmp_path)
    windows = {"w": (80, 110), "z": (85, 115), "t": (160, 200)}
    for cls, (lo, hi) in windows.items():
        jets = read_jetnet(files[cls])  # the reader validates the layout too
        assert len(jets) == 150
        median = float(np.median(jets.jets[:, 2]))
        assert lo <= median <= hi, f"{cls} jet-mass median {median:.1f} GeV outside [{lo}, {hi}]"
        pt = jets.jets[:, 0]
        assert pt.min() >= cfg.jet_pt_min and pt.max() <= cfg.jet_pt_max
        p = jets.particles
        assert np.all(np.diff(p[..., 2], axis=1) <= 1e-6), "constituents sorted by pT"
        assert np.all(np.abs(p[..., 1]) <= np.pi)


def test_deterministic_for_seed_whatever_the_workers(tmp_path: Path) -> None:
    one = generate(GenerateConfig(classes=("q",), jets_per_class=24, chunk_size=8, workers=1, seed=5), tmp_path / "a")
    two = generate(GenerateConfig(classes=("q",), jets_per_class=24, chunk_size=8, workers=2, seed=5), tmp_path / "b")
    other = generate(GenerateConfig(classes=("q",), jets_per_class=24, chunk_size=8, workers=2, seed=6), tmp_path / "c")
    a, b, c = (read_jetnet(f["q"]) for f in (one, two, other))
    np.testing.assert_array_equal(a.particles, b.particles)
    assert not np.array_equal(a.particles, c.particles)


def test_cli_rejects_unknown_class(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "generate", "--out", str(tmp_path), "--classes", "q,h"])
    assert result.exit_code == 2 and "unknown classes ['h']" in result.output
