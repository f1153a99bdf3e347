"""``jbot export``: a fetched encoder or classifier as an ONNX file with a dynamic batch axis."""

from __future__ import annotations

from pathlib import Path

from jbot.config import JbotConfig
from jbot.export import export_onnx
from jbot.tracking.models import load_from_uri


def export_model(cfg: JbotConfig, source: str, out: Path) -> dict[str, list[str]]:
    """The ONNX graph's input and output names."""
    return export_onnx(load_from_uri(source, str(cfg.tracking.uri)), out)
