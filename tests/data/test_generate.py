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

pytest.importorskip("pythia8mc", reason="install the generate extra: pip install 'jbot-hep[generate]'")
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


def test_more_background_than_signal(tmp_path: Path) -> None:
    """--background-jets sizes q and g alone; their first chunks are those of a plain run with the same seed."""
    result = CliRunner().invoke(app, ["data", "generate", "--out", str(tmp_path / "a"), "--classes", "q,w",
                                      "--jets-per-class", "8", "--background-jets", "16", "--chunk-size", "8",
                                      "--seed", "4"])
    assert result.exit_code == 0, result.output
    q, w = read_jetnet(tmp_path / "a" / "q.hdf5"), read_jetnet(tmp_path / "a" / "w.hdf5")
    assert (len(q), len(w)) == (16, 8)
    plain = generate(GenerateConfig(classes=("q",), jets_per_class=8, chunk_size=8, seed=4), tmp_path / "b")
    np.testing.assert_array_equal(q.particles[:8], read_jetnet(plain["q"]).particles)


def test_demo_scale_generates_more_background() -> None:
    from jbot.commands.reproduce import SCALES, generated_text

    gen = SCALES["demo"].generate_config(2000, workers=2, seed=1)
    assert [gen.jets_for(c) for c in gen.classes] == [6000, 6000, 2000, 2000, 2000] and gen.total_jets == 18000
    assert generated_text(gen) == "6000 q and g, 2000 W, Z and t jets each"
    cpu = SCALES["cpu"].generate_config(10000, workers=2, seed=1)
    assert cpu.background_per_class is None and generated_text(cpu) == "10000 jets per class"
