"""The Clock as a test sets it: the wall clock and the monotonic clock stand still until the
test moves them (``advance``, or ``at`` for a wall-clock time of day); ``sleep`` returns at
once, having moved both by the time asked, so code that waits is driven, not waited for."""

from __future__ import annotations

from datetime import datetime, timezone

from agent.system.clock import Clock

DAY = 86400.0
START = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC: any fixed time far from 1970


class FakeClock(Clock):
    def __init__(self, at: float | datetime = START, monotonic: float = 1000.0) -> None:
        self.t = at.timestamp() if isinstance(at, datetime) else float(at)
        self.mono = monotonic
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float = 0.0, *, days: float = 0.0) -> FakeClock:
        """Move both clocks forward (a negative ``seconds`` sets the wall clock back alone,
        as an administrator or NTP can; monotonic time never goes back)."""
        step = seconds + days * DAY
        self.t += step
        self.mono += max(0.0, step)
        return self

    @property
    def at(self) -> datetime:
        """The wall clock as an aware datetime (UTC); set it with any aware datetime."""
        return datetime.fromtimestamp(self.t, timezone.utc)

    @at.setter
    def at(self, value: datetime) -> None:
        if value.tzinfo is None:
            raise ValueError(f"{value}: a time without a zone")
        self.t = value.timestamp()
