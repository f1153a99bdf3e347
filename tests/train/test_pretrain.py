"""The pre-training loop end to end on tiny synthetic data (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jbot.cli import app
from jbot.config import JbotConfig, load_config
from jbot.data.splits import Split, make_split
from jbot.evaluate.embed import embed
from jbot.ssl.method import Distillation, StudentOutputs, TeacherOutputs
from jbot.train.checkpoint import CheckpointError, load_checkpoint, load_encoder
from jbot.train.pretrain import EpochReport, Pretrainer, TrainingDiverged, pretrain
from jbot.train.tracker import MemoryTracker
from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny(fake_data: Path) -> tuple[JbotConfig, Split]:
    cfg = load_config(None, TINY + [f"data.dir={fake_data}"])
    return cfg, make_split(fake_data, "5class", n_train=320, n_val=100, n_test=100)


def test_pretrain_logs_monitors_and_checkpoints(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    tracker = MemoryTracker()
    result = pretrain(cfg, split, tmp_path, tracker)
    steps = [s for s, _ in tracker.metrics]
    assert steps == [1, 2, 3]
    first = tracker.metrics[0][1]
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo", "diag/teacher_entropy",
                "diag/student_entropy", "diag/center_norm_cls", "diag/center_norm_part", "diag/lr",
                "diag/teacher_momentum", "system/jets_per_s", "health/cls_rank", "health/teacher_occupancy"):
        assert key in first
    assert "val/knn_acc" in tracker.metrics[1][1] and "val/knn_acc" not in first
    assert 0.0 <= result.knn_acc <= 1.0
    state = load_checkpoint(result.checkpoint)
    assert state["epoch"] == 3 and state["config"]["model"]["d_model"] == 16
    for key in ("student", "teacher", "centers", "optimizer", "rng", "history"):
        assert key in state
    assert "mask_token" in "".join(state["student"])
    # the checkpoint alone rebuilds the encoder: no config file needed
    encoder = load_encoder(result.checkpoint)
    trainer = Pretrainer(cfg, split, tmp_path / "other")
    trainer.restore(result.checkpoint)
    a, _ = embed(encoder, split.test.x)
    b, _ = embed(trainer.student.encoder, split.test.x)
    assert (a == b).all()


def test_teacher_never_receives_gradients(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    trainer = Pretrainer(cfg, split, tmp_path)
    method = trainer.method
    views, masked = method.views(trainer.source.x[:32], trainer.gen)
    teacher = method.teacher_outputs(trainer.teacher, views)
    method.losses(teacher, method.student_outputs(trainer.student, views, masked))[0].backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None for p in trainer.student.parameters())


def test_losses_read_the_centres_and_the_step_updates_them(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    trainer = Pretrainer(cfg, split, tmp_path)
    method, xb = trainer.method, trainer.source.x[:32]
    views, masked = method.views(xb, trainer.gen)
    before = {k: v.clone() for k, v in trainer.centers.state_dict().items()}
    method.losses(method.teacher_outputs(trainer.teacher, views), method.student_outputs(trainer.student, views, masked))
    assert all(torch.equal(v, trainer.centers.state_dict()[k]) for k, v in before.items())
    trainer.train_step(xb, 0)
    assert all(not torch.equal(v, trainer.centers.state_dict()[k]) for k, v in before.items())


def test_resume_equals_uninterrupted(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    full = pretrain(cfg, split, tmp_path / "full")

    def stop_after_two(report: EpochReport) -> None:
        if report.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, split, tmp_path / "cut", on_epoch=stop_after_two)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 2
    resumed = pretrain(cfg, split, tmp_path / "cut", resume=tmp_path / "cut" / "checkpoint.pt")
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for part in ("student", "teacher", "centers"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"
    assert a["history"]["train/loss"] == b["history"]["train/loss"]


def test_divergence_names_epoch_and_step_and_keeps_checkpoint(
    tiny: tuple[JbotConfig, Split], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, split = tiny
    steps = 320 // 64
    original = Distillation.losses
    calls = {"n": 0}

    def poisoned(self: Distillation, teacher: TeacherOutputs, student: StudentOutputs) -> torch.Tensor:
        calls["n"] += 1
        terms = original(self, teacher, student)
        if calls["n"] == steps + 3:  # epoch 2, step 3
            terms = terms * float("nan")
        return terms

    monkeypatch.setattr(Distillation, "losses", poisoned)
    trainer = Pretrainer(cfg, split, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3 of 5.*last good checkpoint \(epoch 1\)"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["student"].values())


def test_bad_checkpoint_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable jbot checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a jbot checkpoint"):
        load_checkpoint(other)


def test_cli_pretrain(fake_data: Path, tmp_path: Path) -> None:
    args = ["pretrain", "--data", str(fake_data), "--out", str(tmp_path), "--device", "cpu",
            "--set", "data.n_train=320", "--set", "data.n_val=100", "--set", "data.n_test=100"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val/knn_acc" in result.output and (tmp_path / "checkpoint.pt").is_file()
    bad = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "data folder not found" in bad.output
