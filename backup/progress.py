"""Progress of long work: a line redrawn in place on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from agent.quote import human_bytes

if TYPE_CHECKING:
    Sink = Callable[[dict[str, Any]], None]

human = human_bytes  # the name backup's and usbimage's modules use
SINK_INTERVAL = 0.5  # seconds between two calls of a sink while the work goes on
_sinks: list[Sink] = []


@contextlib.contextmanager
def reporting(sink: Sink) -> Iterator[None]:
    """Every Progress begun inside the block also hands ``sink`` its numbers (bytes, files,
    totals, seconds) at its start, every SINK_INTERVAL and at its end, from its own thread:
    how ``steward backup create`` keeps a progress file for the Cockpit page without a line
    in the backup's own code."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Calls ``sample()`` -> (bytes done, files done) every ``interval`` seconds and shows
    bytes and files against the totals, the rate and the time left. ``totals()``, when
    given, is asked for the totals each time (they grow while a walk goes on)."""

    def __init__(self, what: str, total_bytes: int, total_files: int,
                 sample: Callable[[], tuple[int, int]], stream: TextIO, *,
                 tty: bool | None = None, interval: float | None = None,
                 totals: Callable[[], tuple[int, int]] | None = None) -> None:
        self.what, self.total_bytes, self.total_files = what, total_bytes, total_files
        self.totals = totals
        self.sample, self.stream = sample, stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (0.5 if self.tty else 15.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._t0 = time.monotonic()
        self._sinks = tuple(_sinks)

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        self._feed(False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._feed(True)
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def line(self) -> str:
        if self.totals is not None:
            self.total_bytes, self.total_files = self.totals()
        done_bytes, done_files = self.sample()
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = done_bytes / elapsed
        left = (self.total_bytes - done_bytes) / rate if rate > 0 else None
        pct = 100.0 * done_bytes / self.total_bytes if self.total_bytes else 100.0
        eta = f", ETA {clock(left)}" if left is not None and done_bytes else ""
        return (f"{self.what}: {human(done_bytes)} of ~{human(self.total_bytes)} ({pct:.0f}%), "
                f"{done_files} of ~{self.total_files} files, {human(rate)}/s{eta}")

    def numbers(self, done: bool = False) -> dict[str, Any]:
        if self.totals is not None:
            self.total_bytes, self.total_files = self.totals()
        done_bytes, done_files = self.sample()
        return {"what": self.what, "bytes": done_bytes, "files": done_files,
                "total_bytes": self.total_bytes, "total_files": self.total_files,
                "seconds": round(time.monotonic() - self._t0, 3), "done": done}

    def _feed(self, done: bool) -> None:
        if not self._sinks:
            return
        numbers = self.numbers(done)
        for sink in self._sinks:
            with contextlib.suppress(Exception):  # a progress file must never stop the work
                sink(numbers)

    def _loop(self) -> None:
        tick = min(self.interval, SINK_INTERVAL) if self._sinks else self.interval
        next_line = time.monotonic() + self.interval
        while not self._stop.wait(tick):
            self._feed(False)
            if time.monotonic() + 1e-3 < next_line:
                continue
            next_line += self.interval
            text = self.line()
            if self.tty:
                self.stream.write("\r\033[K" + text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
