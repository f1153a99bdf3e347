"""ONNX export: a jbot encoder (and classifier head) as one ONNX graph for ONNX Runtime inside experiment software.

Inputs: ``jets`` (batch, P, F) float32, plus ``jet_features`` (batch, 4) for jet-conditioned encoders. Outputs, as
``jbot embed`` writes them: ``cls`` (batch, D), ``particles`` (batch, P, D) and, for classifiers, ``probs``
(batch, C). The batch axis is dynamic; P is fixed in the graph, the model's ``model.n_particles`` (30 for JetNet,
150 for JetNet150: the traced example has that many slots). Uses PyTorch's ``torch.export``-based exporter
(needs ``onnx`` and ``onnxscript``: ``pip install 'jbot-hep[export]'``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from jbot.config import ModelConfig
from jbot.data.features import layout
from jbot.errors import JbotError
from jbot.io import atomic_write
from jbot.train.checkpoint import LoadedModel

OPSET = 18


class ExportError(JbotError, RuntimeError):
    """The model cannot be exported (missing exporter packages, an unsupported model)."""


class _Graph(torch.nn.Module):
    """The encoder (and head) with the outputs of ``jbot embed``."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.encoder = loaded.encoder.eval()
        self.head = loaded.classifier.eval() if loaded.classifier is not None else None

    def forward(self, jets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls, particles = self.encoder(jets)
        if self.head is None:
            return cls, particles
        return cls, particles, torch.softmax(self.head(cls).float(), dim=-1)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter reports its internals (skipped torchvision ops, deprecations) on loggers, warnings and stdout."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def schema_metadata(cfg: ModelConfig) -> dict[str, str]:
    """The input schema an exported file records: the columns of ``jets`` and its particle slots."""
    return {"jbot.features": ",".join(layout(cfg.features)), "jbot.n_particles": str(cfg.n_particles)}


def output_names(loaded: LoadedModel) -> list[str]:
    return ["cls", "particles"] + (["probs"] if loaded.classifier is not None else [])


def export_onnx(loaded: LoadedModel, out: str | Path) -> dict[str, list[str]]:
    """Write ``out`` (atomically); returns the graph's input and output names."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the packages onnx and onnxscript ({exc.name} is missing): "
                          "pip install 'jbot-hep[export]'") from None
    cfg = loaded.encoder.cfg
    graph = _Graph(loaded)
    jets = torch.zeros(2, cfg.n_particles, cfg.n_features)
    jets[:, :3, 2], jets[:, :3, 3] = 0.3, 1.0
    batch = torch.export.Dim("batch")
    args: tuple[torch.Tensor, ...] = (jets,)
    shapes: dict[str, object] = {"jets": {0: batch}}
    inputs = ["jets"]
    outputs = output_names(loaded)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(graph, args, dynamo=True, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
    except Exception as exc:  # the exporter raises many types; the message names the model and the cause
        raise ExportError(f"cannot export this model to ONNX: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:300]}") from None
    assert program is not None

    def write(tmp: Path) -> None:  # the graph, then the input schema as its metadata (what `jets` columns are)
        import onnx

        program.save(str(tmp), external_data=False)
        proto = onnx.load(str(tmp))
        for key, value in schema_metadata(cfg).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))

    atomic_write(out, write)
    return {"inputs": inputs, "outputs": outputs}
