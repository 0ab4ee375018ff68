"""Stopping on a signal at a safe point: Ctrl-C (and SIGTERM, a job scheduler's stop) asks a training loop to stop
at its next step boundary, where its state is consistent and can be saved; a second signal stops at once.

    stop = StopSignals((signal.SIGINT, signal.SIGTERM))
    with stop:                       # the handlers are installed here, and the previous ones put back after
        while not stop.requested:
            step()
    stop.received                    # [signal.SIGTERM]: which signal asked (a CLI exits 130 or 143 from it)

The Trainer (``Trainer(stop_signals=...)``) and the book trainer's loop both use it, so the two CLIs stop the same
way. Python delivers signals to the main thread only: elsewhere nothing is installed and only :meth:`request`
stops the loop.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Iterable


class StopSignals:
    """Signals as requests to stop at the next safe point; the second one raises KeyboardInterrupt (stop now).

    ``received`` lists the signal numbers in the order they came (:meth:`request` adds one too); ``requested`` is
    whether any came. Usable as a context manager any number of times; it keeps what it received across uses.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGINT,)) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as if `signum` had arrived (a test, or another rank that was stopped)."""
        if not self.received:
            self.received.append(signum)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received:  # a second signal: stop now, whatever the loop is doing
            self.received.append(signum)
            raise KeyboardInterrupt
        self.received.append(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
