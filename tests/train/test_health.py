"""Representation health: the effective rank and the teacher's occupancy against direct computations, a healthy
tiny run told apart from one forced to collapse (centring off), and the detector's count carried over a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jbot.config import JbotConfig, load_config
from jbot.data.splits import Split, make_split
from jbot.train.health import OCCUPANCY, RANK, CollapseDetector, effective_rank, occupancy
from jbot.train.pretrain import EpochReport, pretrain
from jbot.train.tracker import MemoryTracker
from tests.conftest import TINY


def test_effective_rank_and_occupancy_by_hand() -> None:
    rng = np.random.default_rng(0)
    constant = torch.ones(200, 16) * torch.linspace(1, 2, 16)
    assert effective_rank(constant) == pytest.approx(1.0, abs=1e-6)  # every row on one line
    assert effective_rank(torch.zeros(10, 4)) == 1.0
    plane = torch.as_tensor(rng.normal(size=(500, 2)) @ rng.normal(size=(2, 16)))
    assert 1.0 < effective_rank(plane) <= 2.0 + 1e-6
    white = torch.as_tensor(rng.normal(size=(5000, 8)))
    s = np.linalg.svd(white.numpy(), compute_uv=False)
    p = s / s.sum()
    assert effective_rank(white) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert effective_rank(white) > 7.5

    logits = torch.zeros(6, 8)
    logits[torch.arange(6), torch.tensor([0, 0, 3, 3, 5, 0])] = 1.0
    assert occupancy(logits, torch.zeros(8)) == 3 / 8
    centre = torch.zeros(8)
    centre[[0, 3, 5]] = 5.0  # the centre outweighs the logits: every row's argmax moves to dimension 1
    assert occupancy(logits, centre) == 1 / 8


def test_detector_counts_epochs_in_a_row_and_replays_a_history() -> None:
    det = CollapseDetector(rank_floor=1.5, dims_floor=1, k=16, patience=3)
    low, ok = {RANK: 4.0, OCCUPANCY: 1 / 16}, {RANK: 4.0, OCCUPANCY: 6 / 16}
    said = [det.update(m, i + 1) for i, m in enumerate([low, low, ok, low, low, low, low])]
    assert [s is not None for s in said] == [False, False, False, False, False, True, False]  # said once
    assert "epoch 6" in said[5] and "1 of its 16 projection dimensions" in said[5] and det.collapsed
    assert det.low({RANK: 1.2, OCCUPANCY: 0.5})[0].startswith("[CLS] effective rank 1.20")
    again = CollapseDetector(1.5, 1, 16, 3)
    again.replay({RANK: [4.0] * 4, OCCUPANCY: [1 / 16, 6 / 16, 1 / 16, 1 / 16]})
    assert again.streak == 2 and again.update(low, 5) is not None


@pytest.fixture(scope="module")
def tiny(fake_data: Path) -> tuple[JbotConfig, Split]:
    cfg = load_config(None, TINY + [f"data.dir={fake_data}", "pretrain.epochs=6", "pretrain.knn_every=0"])
    return cfg, make_split(fake_data, "5class", n_train=320, n_val=100, n_test=100)


def _run(cfg: JbotConfig, split: Split, out: Path, **overrides: object) -> tuple[MemoryTracker, list, list]:
    cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update=overrides)})
    tracker, warned, reports = MemoryTracker(), [], []
    pretrain(cfg, split, out, tracker, on_warning=warned.append,
             on_epoch=lambda r: reports.append(r) and None)
    return tracker, warned, reports


def test_health_tells_a_healthy_run_from_a_forced_collapse(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    k = cfg.model.d_proj
    healthy, warned, reports = _run(cfg, split, tmp_path / "ok")
    shares = [m[OCCUPANCY] for _, m in healthy.metrics]
    ranks = [m[RANK] for _, m in healthy.metrics]
    assert len(shares) == len(ranks) == 6  # every epoch
    # (the first epoch's centre has not settled yet: one low epoch is what collapse_patience allows for)
    assert min(shares[1:]) >= 3 / k and all(1.5 < r <= cfg.model.d_model for r in ranks), (shares, ranks)
    assert not warned and "jbot.collapse" not in healthy.tags and not any(r.collapsed for r in reports)

    # centring off (the centre stays at zero): the teacher sends every jet to one prototype, the classic collapse
    collapsed, warned, reports = _run(cfg, split, tmp_path / "collapsed", center_momentum=1.0)
    shares = [m[OCCUPANCY] for _, m in collapsed.metrics]
    assert max(shares[2:]) == 1 / k, shares
    assert len(warned) == 1 and "collapsed at epoch 3" in warned[0] and "pretrain.collapse_dims" in warned[0]
    assert collapsed.tags["jbot.collapse"] == "epoch 3"
    assert [r.collapsed for r in reports] == [False, False, True, True, True, True]
    assert isinstance(reports[0], EpochReport)
