"""The fake Anthropic upstream in a process of its own: `python -m bench.upstream PORT`."""

from __future__ import annotations

import signal
import sys
import threading

from support.fake_anthropic import FakeAnthropic

if __name__ == "__main__":
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeAnthropic(port=int(sys.argv[1]), stream_delay_ms=0):
        stop.wait()
