"""jbot's signal handler in this process: a stop that lands where Python drops exceptions is raised again."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterator

import pytest

from jbot import signals


@pytest.fixture
def handler() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (*signals.STOP_SIGNALS, signal.SIGINT)}
    signals.install()
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)
        signals._pending = None


class _Finaliser:
    """Sends SIGTERM to this process from ``__del__``: the handler's exception is raised inside the finaliser,
    where Python prints "Exception ignored" and goes on (as in a garbage collection inside SQLAlchemy)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_dropped_inside_a_finaliser_is_raised_at_the_next_check(handler: None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    dropped: list = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)  # where Python reports "Exception ignored in"
    _Finaliser()  # dropped at once: __del__ runs here and its Stopped is swallowed
    gc.collect()
    assert [type(d.exc_value) for d in dropped] == [signals.Stopped], "the raise was dropped, as in a finaliser"
    assert signals.pending() == signal.SIGTERM
    with pytest.raises(signals.Stopped) as stopped, signals.deferred():
        signals.raise_pending()  # a training loop's step boundary
    assert stopped.value.signum == signal.SIGTERM and signals.pending() is None


def test_a_signal_inside_deferred_waits_for_the_boundary(handler: None) -> None:
    with signals.deferred():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.pending() == signal.SIGUSR1, "recorded, not raised"
        with pytest.raises(signals.Stopped):
            signals.raise_pending()
    assert signals.pending() is None


def test_install_forgets_a_stop_an_earlier_command_handled(handler: None) -> None:
    with pytest.raises(signals.Stopped):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
    assert signals.pending() == signal.SIGTERM
    signals.install()  # the next command run in this process (a notebook, a test)
    assert signals.pending() is None
    with signals.deferred():
        signals.raise_pending()  # nothing left to raise
