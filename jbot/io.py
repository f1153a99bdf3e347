"""Files jbot writes: atomically (a temp file beside the target, then a rename), with one clear error when the disk
is full or the folder is not writable, and scratch folders that are removed when the process ends.

Torch-free and MLflow-free; every write path of jbot (checkpoints, HDF5 files, .npz, JSON, reports) goes through
``atomic_write``.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from jbot.errors import JbotError

NEARLY_FULL = 1 << 20  # bytes


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class WriteError(JbotError, OSError):
    """A file could not be written; the message names it and the free space. The previous file is intact."""


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk holding ``path`` (or its nearest existing parent); None if unknown."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


def free_space(path: str | Path) -> str:
    """Free space on the disk holding ``path``, human-readable."""
    found = free_bytes(path)
    if found is None:
        return "unknown space"
    free = float(found)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown space"


def is_disk_full(exc: BaseException) -> bool:
    """``exc`` or anything in its chain is a full disk (ENOSPC, SQLite's "database or disk is full", ...)."""
    for current in exception_chain(exc):
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current).lower()
        if "disk is full" in text or "no space left" in text or "disk quota" in text:
            return True
    return False


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes / contexts, each once."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def write_error(path: Path, exc: BaseException) -> WriteError:
    free = free_bytes(path.parent)
    # torch reports a short write as RuntimeError("... unexpected pos ..."), without errno
    if is_disk_full(exc) or (isinstance(exc, RuntimeError) and free is not None and free < NEARLY_FULL):
        reason = "the disk is full"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    else:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return WriteError(f"cannot write {path}: {reason} ({free_space(path.parent)} free there); "
                      "any earlier version of the file is unchanged")


def atomic_write(path: str | Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temp file in the target's folder, then rename it onto ``path``.

    A crash, a full disk or an error in ``write`` leaves ``path`` as it was and no temp file behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes owner-only files; the result gets the user's usual mode
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a short write as RuntimeError
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 8 MiB blocks (``sha256`` for jbot's own records, ``md5`` where a
    server publishes one)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_stores: list[Path] = []  # the SQLite stores this process writes (named when their disk fills up)


def note_store(uri: str) -> None:
    """Remember an SQLite store's file (``jbot.tracking.mlflow.connect`` and the Optuna storage call this)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):]).absolute()
        if path in _stores:
            _stores.remove(path)
        _stores.append(path)  # the last one is the store in use


def stores() -> list[Path]:
    return list(_stores)


def full_disk_message(exc: BaseException, home: Path) -> str:
    """What a full disk stopped: the file being written where the error names it (else the SQLite stores this
    process writes), with the free space where that file is."""
    chain = exception_chain(exc)
    named = next((Path(e.filename) for e in chain if isinstance(e, OSError) and e.filename), None)
    sqlite = any("sqlite" in type(e).__module__ or "database or disk is full" in str(e) for e in chain)
    if named is not None:
        where = f"while writing {named} ({free_space(named.parent)} free there)"
    elif sqlite and _stores:
        where = f"while writing the store {_stores[-1]} ({free_space(_stores[-1].parent)} free there)"
    else:
        where = f"while writing ({free_space(home)} free under {home}, the working folder)"
    return (f"the disk is full {where}. Files and runs written before are intact; free some space and run the "
            "command again.")


_scratch: tempfile.TemporaryDirectory[str] | None = None


def scratch_dir(prefix: str = "jbot-") -> Path:
    """A new folder under this process's scratch space, removed (with everything in it) when the process ends."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.TemporaryDirectory(prefix="jbot-")
        atexit.register(_scratch.cleanup)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch.name))
