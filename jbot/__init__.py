"""jbot: jBOT jet representations, MLflow-native. ``import jbot`` is cheap; the notebook API (``jbot.api``) loads on
first use: ``jbot.make_config``, ``jbot.generate``, ``jbot.pretrain``, ``jbot.probe``, ``jbot.detect_anomalies``,
``jbot.load_encoder``, ``jbot.load_split``, ``jbot.register_best`` (docs/python-api.md)."""

from typing import Any

__version__ = "0.1.0"

_API = ("Encoder", "detect_anomalies", "generate", "load_encoder", "load_split", "make_config", "pretrain",
        "probe", "register_best")


def __getattr__(name: str) -> Any:
    if name in _API:
        from jbot import api

        return getattr(api, name)
    raise AttributeError(f"module 'jbot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
