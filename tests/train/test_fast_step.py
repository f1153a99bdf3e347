"""The fast paths of the pre-training step give the plain step's numbers: heads on the tokens a loss reads only,
the graph-ready step (device-side LR and momentum, data-independent shapes: what a CUDA graph replays) and
torch.compile on the CPU. The recorded graph's replays on a CUDA device: tests/train/test_gpu.py."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from jbot.config import ConfigError, JbotConfig, load_config
from jbot.data.splits import Split, make_split
from jbot.train.device import use_cuda_graphs
from jbot.train.graphs import WARMUP_STEPS, GraphCaptureError, GraphStep
from jbot.train.pretrain import EagerStep, Pretrainer, pretrain_step
from tests.conftest import TINY

STEPS = 4
# the comparisons on the CPU stay there on a machine with CUDA too (runtime.device=auto would pick it)
SETTINGS = ["pretrain.grad_clip=3.0", "pretrain.warmup_epochs=0.5"]
CPU = [*SETTINGS, "runtime.device=cpu"]


@pytest.fixture(scope="module")
def tiny(fake_data: Path) -> tuple[JbotConfig, Split]:
    cfg = load_config(None, TINY + [f"data.dir={fake_data}", *CPU])
    return cfg, make_split(fake_data, "5class", n_train=400, n_val=0, n_test=0)


def run_steps(trainer: Pretrainer, steps: int = STEPS) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``steps`` steps on the first batches of epoch 0 -> (steps, terms), the teacher's weights."""
    batches = trainer.source.batches(0, 0, trainer.batch, 0, 1)
    terms = [trainer.train_step(next(batches), it) for it in range(steps)]
    return torch.stack(terms), {k: v.clone() for k, v in trainer.teacher.state_dict().items()}


def graph_step(trainer: Pretrainer, capture: bool, required: bool = False) -> GraphStep:
    """The trainer's step wrapped for a CUDA graph, whatever its device."""
    return GraphStep(functools.partial(pretrain_step, trainer.parts), trainer.lr, trainer.momentum, trainer.gen,
                     trainer.device, capture=capture, required=required)


def assert_same_training(a: tuple[torch.Tensor, dict[str, torch.Tensor]],
                         b: tuple[torch.Tensor, dict[str, torch.Tensor]], rtol: float, atol: float) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for key, value in a[1].items():
        torch.testing.assert_close(value, b[1][key], rtol=rtol, atol=atol, msg=f"teacher {key} differs")


def test_heads_on_selected_tokens_equal_heads_on_all(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    sparse = Pretrainer(cfg, split, tmp_path / "a")
    dense = Pretrainer(cfg, split, tmp_path / "b")
    assert not sparse.method.static  # the CPU default
    dense.method.static = True
    a, b = run_steps(sparse), run_steps(dense)
    assert a[0][:, 1].min() > 0  # L_Part was computed (masked tokens exist)
    assert_same_training(a, b, rtol=1e-5, atol=1e-6)


def test_graph_ready_step_equals_plain_step(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    plain = Pretrainer(cfg, split, tmp_path / "a")
    ready = Pretrainer(cfg, split, tmp_path / "b")
    ready.method.static = True
    ready.step_fn = graph_step(ready, capture=False)
    a, b = run_steps(plain), run_steps(ready)
    assert isinstance(ready.optimizer.param_groups[0]["lr"], torch.Tensor)  # read on the device
    assert float(ready.step_fn.lr) == pytest.approx(float(plain.lr[STEPS - 1]), rel=1e-6)
    assert_same_training(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # torch.compile: ~35 s of graph compilation on a CPU
def test_compiled_step_on_cpu_equals_eager(tiny: tuple[JbotConfig, Split], tmp_path: Path) -> None:
    cfg, split = tiny
    compiled_cfg = load_config(None, TINY + [f"data.dir={cfg.data.dir}", *CPU, "runtime.compile=on"])
    eager = Pretrainer(cfg, split, tmp_path / "a")
    compiled = Pretrainer(compiled_cfg, split, tmp_path / "b")
    assert isinstance(compiled.step_fn, EagerStep)
    assert compiled.step_fn.parts.teacher_forward is not compiled.teacher  # the networks went through torch.compile
    assert_same_training(run_steps(eager), run_steps(compiled), rtol=1e-4, atol=1e-5)
    # the checkpoint's keys are the plain modules' (a compiled run resumes in eager mode and back)
    assert set(compiled.state()["student"]) == set(eager.state()["student"])


class _FailingGraph:
    def __init__(self) -> None:
        raise RuntimeError("capture is not possible here")


def test_a_failed_capture_goes_on_eagerly_unless_graphs_were_required(tiny: tuple[JbotConfig, Split], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording fails (made to, with or without CUDA): auto trains on without the graph, on is an error naming
    the fix."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FailingGraph)
    cfg, split = tiny
    plain = Pretrainer(cfg, split, tmp_path / "a")
    fallback = Pretrainer(cfg, split, tmp_path / "b")
    fallback.method.static = True
    fallback.step_fn = step = graph_step(fallback, capture=True)
    step.eager_steps = WARMUP_STEPS  # the next step is the one recorded
    assert_same_training(run_steps(plain), run_steps(fallback), rtol=1e-5, atol=1e-6)
    err = capsys.readouterr().err
    assert "CUDA graph capture failed (RuntimeError: capture is not possible here)" in err and not step.capture
    assert step.graph is None
    strict = Pretrainer(cfg, split, tmp_path / "c")
    strict.step_fn = step = graph_step(strict, capture=True, required=True)
    step.eager_steps = WARMUP_STEPS
    with pytest.raises(GraphCaptureError, match="runtime.cuda_graphs=off"):
        run_steps(strict)


def test_cuda_graphs_setting() -> None:
    cpu = torch.device("cpu")
    assert not use_cuda_graphs(cpu, "auto") and not use_cuda_graphs(cpu, "off")
    with pytest.raises(ConfigError, match="cuda_graphs=on needs a CUDA device"):
        use_cuda_graphs(cpu, "on")
    with pytest.raises(ConfigError, match="one process"):
        use_cuda_graphs(torch.device("cuda"), "on", world=2)
    assert not use_cuda_graphs(torch.device("cuda"), "auto", world=2)
    assert load_config(None, ["runtime.cuda_graphs=off"]).runtime.cuda_graphs == "off"


def test_host_waits_names_where_the_step_waits_and_passes_other_warnings_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before a capture, its logic on the CPU: torch's sync debug mode set to warn and back, its warnings
    turned into places, anyone else's warnings left alone (the GPU test makes a real one)."""
    import warnings

    from jbot.train.graphs import host_waits

    modes: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with host_waits(True) as waits:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
            warnings.warn("something else", DeprecationWarning, stacklevel=1)
        with host_waits(False) as unwatched:
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
    assert modes == ["warn", 0]
    assert len(waits) == 1 and waits[0].startswith(__file__ + ":") and unwatched == []
    assert [str(w.message) for w in outer] == ["something else", "called a synchronizing CUDA operation"]
