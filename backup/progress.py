"""Progress of long work: a line redrawn in place on a TTY, plain periodic lines otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

from agent.quote import human_bytes

human = human_bytes  # the name backup's and usbimage's modules use


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

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
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

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            text = self.line()
            if self.tty:
                self.stream.write("\r\033[K" + text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
