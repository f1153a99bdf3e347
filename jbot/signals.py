"""A scheduler's signals as orderly stops, like Ctrl-C.

SLURM and other schedulers end a job with SIGTERM, and can send a warning signal (SIGUSR1 by convention) a few
minutes before the time limit: ``#SBATCH --signal=USR1@120`` reaches the job steps ``srun`` starts,
``--signal=B:USR1@120`` the batch shell, which forwards it (as ``examples/slurm/`` does). ``install`` makes both
raise ``Stopped``, a ``KeyboardInterrupt``, in the main thread: every path that already handles Ctrl-C (runs
ended KILLED, checkpoints kept, trials failed and re-queued, scratch folders removed at exit) handles them too.

Inside ``deferred()`` (pre-training's steps) a first signal, Ctrl-C included, is only recorded: the loop asks
``pending()`` at its next step boundary, writes a checkpoint there and calls ``raise_pending()``. A second signal
raises at once.

Outside ``deferred()`` a signal raises where the main thread is, and stays recorded as well: Python drops an
exception raised inside a finaliser or a weakref callback (a garbage collection that runs inside SQLAlchemy, say)
after printing "Exception ignored", and the next ``raise_pending()`` raises it again, so a stop is never lost.

Exit codes follow the shell's convention, 128 + the signal's number: 130 for Ctrl-C (SIGINT), 143 for SIGTERM,
138 for SIGUSR1 (on Linux). Torch-free and MLflow-free.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by ``signum`` (SIGTERM or SIGUSR1)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_pending: int | None = None
_deferring = 0


def _handler(signum: int, frame: object) -> None:
    global _pending
    first = _pending is None
    _pending = signum  # kept when raised too: Python drops a raise inside a finaliser, raise_pending() raises it
    if not (_deferring and first):
        _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(signum)


def install() -> None:
    """SIGTERM and SIGUSR1 raise ``Stopped`` from now on, and Ctrl-C is deferred like them inside ``deferred()``
    (in the main thread only; elsewhere nothing changes)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        return
    _pending = None  # a stop handled by an earlier command of this process is over
    for sig in (*STOP_SIGNALS, signal.SIGINT):
        signal.signal(sig, _handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals inside this block are recorded for ``pending()`` instead of raising (nested blocks allowed); one
    still pending when the outermost block ends normally is raised there."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_pending()


def pending() -> int | None:
    """The signal received and not yet raised by ``raise_pending()``, if any."""
    return _pending


def raise_pending() -> None:
    """Raise ``Stopped`` for the recorded signal (and forget it); nothing if none was received."""
    global _pending
    signum, _pending = _pending, None
    if signum is not None:
        _raise(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal: 143 for SIGTERM, 138 for SIGUSR1, 130 for Ctrl-C."""
    return 128 + exc.signum if isinstance(exc, Stopped) else 130


def mark(exc: BaseException, where: str) -> None:
    """Record on a stop (``Stopped`` or Ctrl-C's ``KeyboardInterrupt``) where the work stopped."""
    exc.jbot_where = where  # type: ignore[attr-defined]


def where(exc: BaseException) -> str | None:
    return getattr(exc, "jbot_where", None)


def describe(exc: BaseException, at: bool = False) -> str:
    """``"stopped by SIGTERM"`` or ``"interrupted"`` (Ctrl-C); with ``at``, where it stopped when that is known
    (``"stopped by SIGTERM at epoch 2, step 17 of 60"``)."""
    text = f"stopped by {exc.name}" if isinstance(exc, Stopped) else "interrupted"
    return f"{text} at {where(exc)}" if at and where(exc) else text


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """A server's lifetime (``jbot ui``, ``jbot dashboard``): Ctrl-C, SIGTERM or SIGUSR1 (raised as
    ``KeyboardInterrupt`` once ``install`` ran) end it quietly; the caller's ``finally`` closes what it opened."""
    try:
        yield
    except KeyboardInterrupt:
        pass
