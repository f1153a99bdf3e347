"""Quiet by default: jbot prints its own lines and progress bars; MLflow and Optuna speak only of problems.

``configure`` runs before MLflow or Optuna is imported (MLflow reads its level and its progress-bar switch from the
environment at import); ``--verbose`` leaves their logging as it is.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "JBOT_VERBOSE"
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
THIRD_PARTY = ("mlflow", "optuna", "alembic", "urllib3", "huey")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure(verbose_: bool) -> None:
    """Set the logging of jbot's dependencies for this process (and the worker processes it starts)."""
    os.environ[VERBOSE_ENV] = "1" if verbose_ else "0"
    if verbose_:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet_optuna()
    # third-party warnings about their own internals (a user can act on none of them)
    for module in ("mlflow", "optuna", "alembic", "sqlalchemy", "pydantic"):
        warnings.filterwarnings("ignore", module=module)


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a failed trial with its whole traceback. Ctrl-C: nothing (jbot says in one line what happened);
    another error: one line unless ``--verbose`` (the traceback is in the trial's MLflow run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, KeyboardInterrupt):
            return False
        if exc is not None and not verbose():
            record.exc_info, record.exc_text = None, None
        return True


class _NoCaughtTraceback(logging.Filter):
    """MLflow logs some exceptions with their traceback before raising them; jbot reports the exception itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or not record.exc_info


def quiet_mlflow() -> None:
    """Called once MLflow is imported (its handlers exist only then)."""
    for handler in logging.getLogger("mlflow").handlers:
        if not any(isinstance(f, _NoCaughtTraceback) for f in handler.filters):
            handler.addFilter(_NoCaughtTraceback())


def quiet_optuna() -> None:
    """Optuna installs its own INFO handler on first use: lower it to errors (called again where Optuna is
    imported). Its warnings (a failed trial, no complete trials yet) show with ``--verbose`` only: jbot's summary
    counts failed trials, and each one's error is kept in the study (and its MLflow run, when it had one)."""
    import sys

    optuna = sys.modules.get("optuna")
    if optuna is None:
        return
    trials = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoInterruptTraceback) for f in trials.filters):
        trials.addFilter(_NoInterruptTraceback())
    if not verbose():
        optuna.logging.set_verbosity(logging.ERROR)
