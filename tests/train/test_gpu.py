"""The CUDA path on a real GPU: the pre-training step recorded as one CUDA graph trains as the eager step does
(fp32 and bf16, compiled or not), the capture succeeds under runtime.cuda_graphs=auto, a real capture failure
falls back to the eager step, a run resumed from its checkpoint equals an uninterrupted one, and batches streamed
through page-locked buffers equal the files' rows.

Every test here is marked ``gpu`` (``make test`` leaves them out; ``benchmarks/gpu/run.sh`` runs them on a lent
GPU). This module imports the engine alone (no MLflow, no Optuna): the GPU machine carries only its wheels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jbot.config import JbotConfig, load_config
from jbot.data.jetnet import write_jetnet
from jbot.data.shards import find_shards
from jbot.data.splits import Split, make_split
from jbot.data.stream import MemorySource, StreamSource
from jbot.train.graphs import WARMUP_STEPS, GraphCaptureError, GraphStep
from jbot.train.pretrain import EagerStep, Pretrainer, pretrain_step
from tests.conftest import TINY

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# one epoch of LR warm-up (6 steps of 64 jets): the LR still rises while the graph replays, as the momentum does
SETTINGS = ["pretrain.grad_clip=3.0", "pretrain.warmup_epochs=1"]
# (rtol of the loss terms and weights, 1 - the least cosine of two runs' updates, their norms' relative difference):
# the graph replays the eager step's kernels (autocast's cache aside), but compiled kernels round differently in bf16
TOLERANCE = {"fp32": (1e-4, 1e-4, 1e-3), "bf16": (1e-3, 1e-4, 1e-2), "bf16-compiled": (2e-2, 2e-2, 5e-2)}

Trace = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def tiny(fake_data: Path) -> tuple[list[str], Split]:
    """The tiny model's settings on CUDA and a 400-jet training split (no validation: no k-NN monitor)."""
    base = TINY + [f"data.dir={fake_data}", *SETTINGS, "runtime.device=cuda"]
    return base, make_split(fake_data, "5class", n_train=400, n_val=0, n_test=0)


def config(base: list[str], *overrides: str) -> JbotConfig:
    return load_config(None, [*base, *overrides])


def weights(trainer: Pretrainer) -> dict[str, torch.Tensor]:
    return {**{f"student.{k}": v.detach().clone() for k, v in trainer.student.state_dict().items()},
            **{f"teacher.{k}": v.detach().clone() for k, v in trainer.teacher.state_dict().items()}}


def run_steps(trainer: Pretrainer, steps: int) -> Trace:
    """``steps`` steps on the first batches of epoch 0 -> (terms of every step, the weights after, the updates:
    after - before, of the student's weights (they carry the learning rate) and the teacher's (the momentum))."""
    before = weights(trainer)
    batches = trainer.source.batches(0, 0, trainer.batch, 0, 1)
    terms = [trainer.train_step(next(batches), it) for it in range(steps)]
    after = weights(trainer)
    return torch.stack(terms), after, {k: after[k].float() - before[k].float() for k in after}


def assert_same_training(a: Trace, b: Trace, rtol: float, cosine: float, norm: float) -> None:
    """The same terms and weights (``rtol``), and the same updates: every weight's update points the same way
    (cosine >= 1 - ``cosine``) with the same size (``norm``), so a stale learning rate or momentum shows even where
    the weights themselves barely move."""
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=rtol / 10)
    for key, value in a[1].items():
        torch.testing.assert_close(b[1][key], value, rtol=rtol, atol=rtol / 10, msg=f"{key} differs")
    for side in ("student.", "teacher."):
        da = torch.cat([v.flatten() for k, v in a[2].items() if k.startswith(side)])
        db = torch.cat([v.flatten() for k, v in b[2].items() if k.startswith(side)])
        assert da.norm() > 0, f"{side} weights did not move"
        cos = float(torch.nn.functional.cosine_similarity(da, db, dim=0))
        ratio = float(db.norm() / da.norm())
        assert cos >= 1 - cosine and abs(ratio - 1) <= norm, f"{side} updates: cosine {cos:.6f}, norm ratio {ratio:.6f}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("compile", ["off", "on"])
def test_recorded_graph_replays_the_eager_step(tiny: tuple[list[str], Split], tmp_path: Path, compile: str,
                                               precision: str) -> None:
    """Warm-up steps, the capture, then replays train as the eager step does, with the networks and losses
    compiled or not, in fp32 and under bf16 autocast (runtime.precision=auto on CUDA)."""
    base, split = tiny
    eager = Pretrainer(config(base, f"runtime.precision={precision}", "runtime.compile=off",
                              "runtime.cuda_graphs=off"), split, tmp_path / "a")
    graphed = Pretrainer(config(base, f"runtime.precision={precision}", f"runtime.compile={compile}",
                                "runtime.cuda_graphs=on"), split, tmp_path / "b")
    assert isinstance(eager.step_fn, EagerStep)
    assert isinstance(graphed.step_fn, GraphStep) and graphed.method.static
    steps = WARMUP_STEPS + 3  # the last three run the recorded graph (the capture's step replays it too)
    a, b = run_steps(eager, steps), run_steps(graphed, steps)
    assert graphed.step_fn.graph is not None and graphed.step_fn.capture
    assert torch.isfinite(b[0]).all()
    assert_same_training(a, b, *TOLERANCE[precision + ("-compiled" if compile == "on" and precision == "bf16" else "")])


def test_the_capture_succeeds_under_auto(tiny: tuple[list[str], Split], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The CUDA defaults (bf16, torch.compile, CUDA graphs: all auto) record the step and replay it for a whole
    run, without the fallback's warning."""
    base, split = tiny
    cfg = config(base, "runtime.precision=auto", "runtime.compile=auto", "runtime.cuda_graphs=auto",
                 "pretrain.epochs=2")
    trainer = Pretrainer(cfg, split, tmp_path / "run")
    assert isinstance(trainer.step_fn, GraphStep)
    result = trainer.fit()
    assert trainer.step_fn.graph is not None and trainer.step_fn.capture
    assert trainer.steps * 2 > WARMUP_STEPS + 1  # some steps were replays
    assert np.isfinite(result.history["train/loss"]).all()
    assert "CUDA graph capture failed" not in capsys.readouterr().err


@pytest.mark.parametrize("wait", ["item", "synchronize"])
def test_a_step_that_cannot_be_recorded_falls_back_to_the_eager_step(tiny: tuple[list[str], Split], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     wait: str) -> None:
    """A step that reads its loss on the host (``.item()``: found in the last warm-up step, no capture tried), or
    that synchronises the device (not seen by torch's sync check: the capture is tried and fails, and CUDA's
    generators and stream are put back): with auto training goes on eagerly, as a run without graphs does (the
    same random draws), the device still usable; with on it is an error naming the fix."""
    base, split = tiny
    plain = Pretrainer(config(base, "runtime.precision=fp32", "runtime.compile=off", "runtime.cuda_graphs=off"),
                       split, tmp_path / "a")
    plain.method.static = True  # as under graphs: the same shapes, the same sums

    def waiting(required: bool, out: str) -> tuple[Pretrainer, GraphStep]:
        """A trainer set up for graphs (capturable optimizer) whose step also waits for the device."""
        trainer = Pretrainer(config(base, "runtime.precision=fp32", "runtime.compile=off", "runtime.cuda_graphs=on"),
                             split, tmp_path / out)

        def body(xb: torch.Tensor, lr: torch.Tensor, momentum: torch.Tensor, cache: bool) -> torch.Tensor:
            terms = pretrain_step(trainer.parts, xb, lr, momentum, cache)
            if wait == "item":
                float(terms[0])  # fine eagerly, refused under capture
            else:
                torch.cuda.synchronize()
            return terms

        trainer.step_fn = step = GraphStep(body, trainer.lr, trainer.momentum, trainer.gen, trainer.device,
                                           capture=True, required=required)
        return trainer, step

    fallback, step = waiting(False, "b")
    steps = WARMUP_STEPS + 3
    a, b = run_steps(plain, steps), run_steps(fallback, steps)
    err = capsys.readouterr().err
    assert "CUDA graph capture failed" in err and not step.capture and step.graph is None, err
    if wait == "item":
        assert "the step waits for the host at" in err and "test_gpu.py" in err, err
    else:
        assert "could not be restored" not in err, err
    assert_same_training(a, b, *TOLERANCE["fp32"])
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # not left on the capture's stream
    torch.cuda.synchronize()  # the device is usable after the failed capture, and its default generator too
    assert float(torch.ones(4, device="cuda").sum()) == 4.0 and torch.rand(4, device="cuda").shape == (4,)

    strict, _ = waiting(True, "c")
    with pytest.raises(GraphCaptureError, match="runtime.cuda_graphs=off"):
        run_steps(strict, steps)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resumed_graph_run_equals_an_uninterrupted_one(tiny: tuple[list[str], Split], tmp_path: Path,
                                                         precision: str) -> None:
    """Two epochs in one run, and a run stopped after its first epoch then a new trainer resuming from its
    checkpoint file for the second: the same losses and weights (the resumed trainer warms up and records its own
    graph)."""
    base, split = tiny
    cfg = config(base, f"runtime.precision={precision}", "runtime.compile=off", "runtime.cuda_graphs=on",
                 "pretrain.epochs=2")
    whole = Pretrainer(cfg, split, tmp_path / "whole")
    whole_result = whole.fit()
    first = Pretrainer(cfg, split, tmp_path / "part")
    first.fit(on_epoch=lambda report: True)  # stopped after epoch 1, as a preempted run is
    assert first.epoch == 1
    resumed = Pretrainer(cfg, split, tmp_path / "part")
    resumed.restore(first.checkpoint_path)
    resumed_result = resumed.fit()
    assert isinstance(resumed.step_fn, GraphStep) and resumed.step_fn.graph is not None
    rtol = TOLERANCE[precision][0]
    for key in ("train/loss", "train/loss_part", "train/loss_cls", "train/loss_koleo"):
        np.testing.assert_allclose(resumed_result.history[key], whole_result.history[key], rtol=rtol, err_msg=key)
    for key, value in weights(whole).items():
        torch.testing.assert_close(weights(resumed)[key], value, rtol=rtol, atol=rtol / 10, msg=f"{key} differs")


def write_shards(folder: Path, x: np.ndarray, n_files: int) -> Path:
    for i, part in enumerate(np.array_split(x, n_files)):
        write_jetnet(folder / f"part_{i:03d}.hdf5", part, np.ones((len(part), 4), np.float32))
    return folder


@pytest.mark.parametrize("window", [10_000, 41])
def test_streamed_page_locked_batches_equal_the_files(tiny: tuple[list[str], Split], tmp_path: Path,
                                                      window: int) -> None:
    """Batches streamed to the GPU through page-locked slots (asynchronous copies) equal the same stream read on
    the CPU, and with one window the in-memory order, while the GPU is kept busy so that the copies wait in its
    queue as the reader refills the slots (many small windows)."""
    _, split = tiny
    x = split.train.x
    shards = find_shards(write_shards(tmp_path / "shards", x, 3))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    batch = 32
    streamed = StreamSource(shards, window=window, seed=7, device=cuda)
    reference = StreamSource(shards, window=window, seed=7, device=cpu)
    torch.cuda.synchronize()
    on_gpu = []
    for xb in streamed.batches(0, 0, batch, 0, 1):  # no sync: each copy waits behind the GPU work queued before it
        on_gpu.append(xb)
        torch.cuda._sleep(50_000_000)  # about 25 ms of GPU time, as a training step would queue
    on_cpu = list(reference.batches(0, 0, batch, 0, 1))
    assert len(on_gpu) == len(on_cpu) == streamed.steps(batch, 1) > 3
    for i, (g, c) in enumerate(zip(on_gpu, on_cpu, strict=True)):
        assert g.device.type == "cuda"
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=0, msg=f"batch {i} differs")
    if window >= len(x):  # one window, one process: exactly the in-memory order
        memory = list(MemorySource(x, 7, cuda).batches(0, 0, batch, 0, 1))
        for i, (g, m) in enumerate(zip(on_gpu, memory, strict=True)):
            torch.testing.assert_close(g, m, rtol=0, atol=0, msg=f"batch {i} differs from the in-memory one")


def test_the_gpu_step_computes_the_cpu_step(tiny: tuple[list[str], Split], tmp_path: Path) -> None:
    """One eager step on the GPU and on the CPU from the same weights, fp32, without the random parts (no
    augmentation, no masking: the devices draw different numbers): the same losses and monitors."""
    base, split = tiny
    off = ["augment.rotation=false", "augment.smear=false", "augment.split=false", "mask.enabled=false",
           "runtime.precision=fp32", "runtime.compile=off", "runtime.cuda_graphs=off"]
    gpu = Pretrainer(config(base, *off), split, tmp_path / "gpu")
    cpu = Pretrainer(config([*base, "runtime.device=cpu"], *off), split, tmp_path / "cpu")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    xb = torch.as_tensor(split.train.x[:64])
    torch.testing.assert_close(gpu.train_step(xb.cuda(), 0).cpu(), cpu.train_step(xb, 0), rtol=1e-3, atol=1e-4)
