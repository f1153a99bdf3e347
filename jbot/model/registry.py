"""Encoders by name: ``model.arch`` picks one from ``ENCODERS``, and ``build_encoder`` is the one place that builds
an encoder from a model config (pre-training networks, checkpoints, fine-tuning from scratch, random baselines, the
Keras importer).

``ENCODERS`` maps a name to a factory ``ModelConfig -> torch.nn.Module``, given as a ``"module:attribute"`` string
that is imported only when an encoder is built (or as the factory itself). This module imports no torch, so the
config checks ``model.arch`` against its keys before anything heavy is loaded; a checkpoint names its encoder
through the model section of the config it carries, and one saved before ``arch`` existed reads as
``"transformer"``, the paper's particle transformer (docs/method.md §4, ``jbot.model.encoder.JetEncoder``).

The interface every encoder has (the one of ``JetEncoder``; callers are typed with it):

- ``__init__(cfg: ModelConfig)``, keeping ``cfg`` as ``self.cfg``;
- ``forward(x, masked=None) -> (cls, tokens)``: particles (B, P, F) and an optional (B, P) boolean mask of the
  particles shown as [MASK] to the pre-training student -> a jet embedding (B, ``cfg.d_model``) and one token per
  particle (B, P, ``cfg.d_model``);
- ``blocks``: an ``nn.ModuleList`` of its layers, first to last (the depths of fine-tuning's layer-wise LR decay;
  every other parameter counts as the embedding);
- ``set_dropout(p)``: the dropout of every layer (fine-tuning and pre-training set it after building);
- ``backbone_parameters() -> int``: its parameter count without the [MASK] token;
- parameters named ``cls_token`` or ``mask_token``, if it has such tokens (pre-training exempts them from weight
  decay).

To add an architecture:

1. write one module, ``jbot/model/<name>.py``, with a class that has the interface above, reading its sizes from
   ``ModelConfig`` (a setting of its own is a new, defaulted field of ``ModelConfig`` in ``jbot/config.py``);
2. add one entry here: ``"<name>": "jbot.model.<name>:<Class>"``.

``model.arch=<name>`` is then accepted by every command, saved in every checkpoint and logged as the MLflow param
``model.arch``; loading such a checkpoint builds that class. A test of it goes in ``tests/model/test_encoders.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from jbot.config import ModelConfig
    from jbot.model.encoder import JetEncoder

EncoderFactory = Callable[["ModelConfig"], Any]  # ModelConfig -> an nn.Module with the interface above

DEFAULT_ARCH = "transformer"

ENCODERS: dict[str, str | EncoderFactory] = {
    DEFAULT_ARCH: "jbot.model.encoder:JetEncoder",  # the paper's particle transformer (docs/method.md §4)
}

# what callers use beyond nn.Module's own members; checked on every encoder built
INTERFACE = ("cfg", "blocks", "set_dropout", "backbone_parameters")


def arch_names() -> list[str]:
    """The names ``model.arch`` accepts, in registration order."""
    return list(ENCODERS)


def encoder_factory(arch: str) -> EncoderFactory:
    """The factory registered as ``arch`` (a ``"module:attribute"`` entry imported now)."""
    if arch not in ENCODERS:
        raise KeyError(f"unknown architecture {arch!r}; choose from {', '.join(ENCODERS)}")
    entry = ENCODERS[arch]
    if not isinstance(entry, str):
        return entry
    module, _, attribute = entry.partition(":")
    return cast("EncoderFactory", getattr(importlib.import_module(module), attribute))


def build_encoder(cfg: ModelConfig, dropout: float = 0.0) -> JetEncoder:
    """A freshly initialised encoder of architecture ``cfg.arch`` with dropout ``dropout`` in its layers.

    Typed as ``JetEncoder``, whose interface every registered encoder has (checked here): an encoder of another
    architecture does not need to subclass it.
    """
    from torch import nn

    encoder = encoder_factory(cfg.arch)(cfg)
    missing = [name for name in INTERFACE if not hasattr(encoder, name)]
    if not isinstance(encoder, nn.Module) or missing:
        what = f"lacks {', '.join(missing)}" if missing else f"is a {type(encoder).__name__}, not a torch module"
        raise TypeError(f"the encoder registered as {cfg.arch!r} {what} (see jbot.model.registry)")
    built = cast("JetEncoder", encoder)
    built.set_dropout(dropout)
    return built
