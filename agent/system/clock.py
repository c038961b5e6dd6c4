"""Time as steward sees it: wall clock for reports, monotonic for intervals; tests may fake it."""

from __future__ import annotations

import time


class Clock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
