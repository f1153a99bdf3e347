"""``jbot embed``: a file of jets through a fetched encoder: [CLS] (N, D), particle tokens (N, P, D) and, for a
classifier, class probabilities, written to one ``.npz``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jbot.config import JbotConfig
from jbot.evaluate.embed import embed_to_file
from jbot.tracking.models import load_from_uri
from jbot.train.device import runtime_device


def embed_file(cfg: JbotConfig, source: str, input_: Path, out: Path, batch_size: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, tuple[int, ...]]:
    """The arrays' shapes, by name."""
    loaded = load_from_uri(source, str(cfg.tracking.uri))
    return embed_to_file(loaded, input_, out, batch_size, runtime_device(cfg.runtime), on_batch=on_batch)
