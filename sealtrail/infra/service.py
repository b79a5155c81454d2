"""What every long-running sealtrail process shares: graceful stop on SIGTERM/SIGINT, backoff."""

from __future__ import annotations

import faulthandler
import gc
import logging
import random
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)


# Collect the youngest generation every this many net allocations (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fit the garbage collector to a stream processor: batches hold thousands of short-lived
    objects (Kafka messages, values, rows), and CPython's default of a collection every 700
    allocations re-scanned them many times per batch (a fifth of the sink's CPU in a profile).
    What was allocated at start-up (modules, schemas) is frozen out of every collection.
    Memory stays bounded: reference counting frees everything that is not a cycle, and cycles
    are still collected, only less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


class StopFlag:
    """Set by SIGTERM/SIGINT (or by code); services drain and exit when it is set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def install(self) -> StopFlag:
        """Route SIGTERM and SIGINT here (main thread only). A second signal stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return self

        def handler(signum: int, _frame: FrameType | None) -> None:
            if self._event.is_set():
                raise KeyboardInterrupt
            log.info("received %s: draining, then stopping", signal.Signals(signum).name)
            self.set(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        # `kill -USR1 <pid>` prints every thread's stack to stderr, even while the main thread
        # waits inside librdkafka: the way to see where a stuck service is.
        try:
            if sys.__stderr__ is not None:
                faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
        except (AttributeError, ValueError, OSError):
            pass  # no real stderr (embedded, or a test runner's capture): no stack dumps

        return self

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stopping."""
        return self._event.wait(seconds)


def backoff(initial: float = 0.2, maximum: float = 30.0, factor: float = 2.0) -> Iterator[float]:
    """Exponential backoff with full jitter: 0.2s, 0.4s, ... capped at ``maximum``."""
    delay = initial
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(maximum, delay * factor)
