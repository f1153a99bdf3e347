"""Where jbot finds the files it ships and where it writes its stores; nothing heavy is imported here.

Shipped files (the Table 1 configs and the sweep search spaces) are package data read with ``importlib.resources``,
so an installed jbot finds them wherever it is installed; a user's own file is always accepted by path.

Stores live under the *working folder*: ``$JBOT_HOME`` if set, else the current directory. The embedded MLflow store
is ``<home>/mlruns/mlflow.db`` (artifacts in ``<home>/mlruns/artifacts/``), the default Optuna storage
``<home>/sweeps/optuna.db``. Nothing is ever written inside the installed package.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from jbot.redaction import is_redacted

HOME_ENV = "JBOT_HOME"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
TRACKING_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_CONFIG = "jbot-s.yaml"


def home() -> Path:
    """The folder jbot's stores live under (absolute): ``$JBOT_HOME``, else the current directory."""
    return Path(os.environ.get(HOME_ENV) or Path.cwd()).expanduser().resolve()


def embedded_tracking_uri() -> str:
    return f"sqlite:///{home() / 'mlruns' / 'mlflow.db'}"


def default_optuna_storage() -> str:
    return f"sqlite:///{home() / 'sweeps' / 'optuna.db'}"


def resolve_tracking_uri(flag: str | None = None, configured: str | None = None) -> str:
    """The MLflow store, first found: ``--tracking-uri``, ``tracking.uri``, ``$MLFLOW_TRACKING_URI``, embedded.

    A configured URI whose password was redacted (a checkpoint's config: jbot never stores passwords) is skipped
    for the flag or the environment; with neither, that is an error naming both."""
    if configured and is_redacted(configured) and not flag:
        found = os.environ.get(TRACKING_ENV)
        if not found:
            from jbot.errors import JbotError

            raise JbotError(f"the tracking store {configured} needs its password, which jbot never writes into "
                            "checkpoints or runs: pass --tracking-uri with it or set MLFLOW_TRACKING_URI (for "
                            "PostgreSQL, PGPASSWORD or ~/.pgpass keep it out of the URI altogether)")
        return found
    return flag or configured or os.environ.get(TRACKING_ENV) or embedded_tracking_uri()


def _shipped(folder: str) -> Traversable:
    return resources.files("jbot").joinpath("configs", *([folder] if folder else []))


def find_yaml(name: str | Path, folder: str = "") -> Path | Traversable:
    """A user's file by path if it exists, else the shipped file of that name (``jbot-b`` or ``jbot-b.yaml``).

    A name that is neither comes back unchanged as a path, for the caller's "not found" message.
    """
    path = Path(name)
    if path.is_file() or len(path.parts) != 1:
        return path
    stem = path.name if path.name.endswith(".yaml") else f"{path.name}.yaml"
    shipped = _shipped(folder).joinpath(stem)
    return shipped if shipped.is_file() else path


def is_model_source(source: str) -> bool:
    """A checkpoint file, an MLflow run id, or a ``runs:/`` / ``models:/`` URI (the forms ``--model`` takes)."""
    return Path(source).is_file() or source.startswith(("runs:/", "models:/")) or bool(RUN_ID.match(source))
