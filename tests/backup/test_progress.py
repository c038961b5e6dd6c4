"""Progress lines: bytes and files against the totals, rate and time left."""

from __future__ import annotations

import io
import time

from backup.progress import Progress, clock, human


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_plain_lines_when_not_a_tty() -> None:
    done = [0]

    def sample() -> tuple[int, int]:
        done[0] += 100 * 2**20
        return done[0], done[0] // 2**20

    out = Stream(tty=False)
    with Progress("backup", 1000 * 2**20, 1000, sample, out, interval=0.05):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and "\r" not in out.getvalue()
    assert "of ~1000.0 MiB" in lines[0] and "of ~1000 files" in lines[0]
    assert "iB/s" in lines[-1] and "ETA 0:" in lines[-1]


def test_a_tty_line_is_redrawn_in_place() -> None:
    out = Stream(tty=True)
    with Progress("backup", 10, 1, lambda: (5, 0), out, interval=0.05):
        time.sleep(0.2)
    text = out.getvalue()
    assert text.startswith("\r\033[K") and "\n" not in text and text.endswith("\r\033[K")
    assert "(50%)" in text


def test_units() -> None:
    assert human(512) == "512 B" and human(3 * 2**30) == "3.0 GiB"
    assert clock(3725) == "1:02:05"
