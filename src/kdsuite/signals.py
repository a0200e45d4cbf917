"""SIGTERM and SIGINT as an exception that ends a run cleanly, and saves that finish first.

Python's default SIGTERM kills the process on the spot, so an MLflow run stays RUNNING forever
and a checkpoint being written is left half-done. Inside `stop_on_signals()` both signals raise
`RunKilled` instead, which unwinds through the MLflow run (ended KILLED, with the signal's name)
like Ctrl-C does. Inside `deferred_signals()` (a checkpoint save) a signal is only recorded and
raised when the block ends, so the save completes first.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunKilled(KeyboardInterrupt):
    """The process got SIGTERM or SIGINT. A KeyboardInterrupt, so nothing that catches
    `Exception` swallows it."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


_deferring = 0
_pending: str | None = None


def _handle(signum, frame) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _deferring:
        _pending = _pending or name
        return
    raise RunKilled(name)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `RunKilled` for the duration of the block (main thread only;
    elsewhere signals cannot be handled and the block runs unchanged)."""
    try:
        previous = {signum: signal.signal(signum, _handle) for signum in HANDLED}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold back `RunKilled` until the block has finished, then raise it if a signal came."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            name, _pending = _pending, None
            raise RunKilled(name)
