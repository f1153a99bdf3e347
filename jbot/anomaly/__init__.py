"""Anomaly scores of a frozen encoder (``detect``, ``scores``, ``sculpting``, ``report``).

The package is also the notebook API's verb: ``jbot.anomaly(source, cfg)`` is ``jbot.api.anomaly`` (``jbot`` would
otherwise find this package under that name once it is imported), so the module is callable."""

import sys
import types
from typing import Any


class _Verb(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from jbot.api import anomaly

        return anomaly(*args, **kwargs)


sys.modules[__name__].__class__ = _Verb
