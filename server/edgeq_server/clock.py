"""Time source. Everything that needs "now" takes a Clock, so tests inject a ManualClock
and never sleep. Times are integer microseconds since the Unix epoch throughout the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

MICROS = 1_000_000


class Clock(Protocol):
    def now(self) -> int:
        """Current time in microseconds since the epoch."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever time jumps (manual clocks only); timers re-check then."""
        ...

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> int:
        return time.time_ns() // 1000

    def subscribe(self, callback: Callable[[], None]) -> None:
        return None

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        return None


class ManualClock:
    """A clock that moves only when told to. ``advance`` wakes subscribed timers."""

    def __init__(self, start: int = 1_800_000_000 * MICROS) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def now(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> int:
        with self._lock:
            self._now += int(seconds * MICROS)
            now = self._now
        for cb in list(self._callbacks):
            cb()
        return now

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def unsubscribe(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)
