"""The model sizes jbot names (the paper's Table 1; docs/method.md §4.6), one table entry each.

A size's dimensions are stated once, in its shipped YAML (``jbot/configs/<config>.yaml``); this table names the
size, its configs and where the paper gives it. Adding a size is one entry here plus its YAML. No torch import:
the CLI reads this table for its help text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from jbot.config import ModelConfig, load_config


@dataclass(frozen=True)
class ModelSize:
    """A named model size: ``config`` is its shipped config at the published scale; ``cpu_config`` the one used
    below it (small compute; None: ``config`` there too); ``source`` where the paper states it."""

    name: str
    config: str
    cpu_config: str | None = None
    source: str = "Table 1"

    @property
    def title(self) -> str:
        return f"jBOT-{self.name}"

    @property
    def model(self) -> ModelConfig:
        """The model section of this size's YAML."""
        return _model(self.config)

    def config_for(self, paper_scale: bool) -> str:
        """The shipped config to start from at the paper's scale (True) or below it."""
        return self.config if paper_scale or self.cpu_config is None else self.cpu_config


SIZES: dict[str, ModelSize] = {s.name: s for s in (
    ModelSize("S", config="jbot-s", cpu_config="jbot-s-cpu"),
    ModelSize("B", config="jbot-b"),
)}


@cache
def _model(config: str) -> ModelConfig:
    return load_config(config).model


def _dims(model: ModelConfig) -> tuple[str, int, int, int]:
    """What tells the sizes apart (another architecture with jBOT-S's dimensions is not jBOT-S)."""
    return model.arch, model.d_model, model.n_layers, model.n_heads


def model_label(model: ModelConfig) -> str:
    """The name of the size whose architecture and dimensions ``model`` has (S, B), else D<d_model>L<n_layers>
    (prefixed with the architecture when it is not the paper's transformer)."""
    for size in SIZES.values():
        if _dims(size.model) == _dims(model):
            return size.name
    prefix = "" if model.arch == "transformer" else f"{model.arch}-"
    return f"{prefix}D{model.d_model}L{model.n_layers}"


def size_names() -> list[str]:
    return list(SIZES)


def size_help() -> str:
    """The CLI's help for --size: 'S | B (jBOT-S or jBOT-B, Table 1)'."""
    titles = [s.title for s in SIZES.values()]
    said = " or ".join(titles) if len(titles) <= 2 else ", ".join(titles[:-1]) + " or " + titles[-1]
    sources = ", ".join(dict.fromkeys(s.source for s in SIZES.values()))
    return f"{' | '.join(SIZES)} ({said}, {sources})"
