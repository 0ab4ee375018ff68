"""llm.stopping.StopSignals: the one place where Ctrl-C and SIGTERM become a request to stop at a safe point."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from llm.training.stopping import StopSignals


def test_the_first_signal_asks_the_second_stops_now_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals((signal.SIGINT, signal.SIGTERM))
    with stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


def test_request_stops_like_a_signal_and_off_the_main_thread_nothing_is_installed():
    stop = StopSignals()
    stop.request(signal.SIGTERM)
    stop.request()  # a second request changes nothing: only signals stop at once
    assert stop.received == [signal.SIGTERM]
    seen = {}

    def worker():
        with StopSignals() as other:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["requested"] = other.requested

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"handler": before, "requested": False}
