"""Credentials never leave the process: every URI jbot writes or prints is passed through ``redact``.

A tracking URI, an Optuna storage URL or an S3 endpoint may carry a password (``postgresql://user:pw@host/db``,
``https://user:token@host``, ``...?password=pw``). Commands hold the real URI in memory (they must connect);
what they write — params, the ``config.yaml`` artifact, checkpoints and the logged model's copy, reports, JSON,
tags, tracebacks, error lines — holds ``***`` in its place. A checkpoint's redacted URI cannot be used to connect
again: a resumed run takes its store from ``--tracking-uri`` or ``$MLFLOW_TRACKING_URI`` instead
(``jbot.paths.resolve_tracking_uri``). Imports nothing heavy.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

M = TypeVar("M")

MARK = "***"
# scheme://user:password@  (the password may hold anything but '@' and whitespace; the last '@' ends it)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"]*):(?P<secret>[^\s'\"]*)@(?=[^\s@'\"]*)")
# ...?password=pw&  (query-string credentials, as SQLAlchemy and libpq accept them)
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_key|secret_key)=)(?P<secret>[^&\s'\"]*)",
                    re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***`` (the user name and host stay)."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MARK}@" if m["secret"] else m[0], text)
    return _QUERY.sub(lambda m: f"{m['head']}{MARK}" if m["secret"] else m[0], text)


def is_redacted(uri: str | None) -> bool:
    """A URI whose password was removed by ``redact`` (it cannot be connected to)."""
    return bool(uri) and (f":{MARK}@" in str(uri) or f"={MARK}" in str(uri))


def public(value: Any) -> Any:
    """A copy of a config tree (dicts, lists, strings, numbers) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(public(v) for v in value)
    return value


def public_config(cfg: M) -> M:
    """A pydantic config (``JbotConfig``) with every string field redacted, validated as the same type."""
    return type(cfg).model_validate(public(cfg.model_dump(mode="json")))  # type: ignore[attr-defined]
