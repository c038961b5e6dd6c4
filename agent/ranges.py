"""Nagios threshold ranges (``10``, ``10:``, ``~:10``, ``10:20``, ``@10:20``).

A range says which values are fine; a value outside it alerts (inside it, with ``@``).
Semantics follow the Nagios plugin development guidelines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.quote import quote

ACCEPTED = "a Nagios range: N (alert above N or below 0), N: (below N), ~:N (above N), " \
    "N:M (outside N..M), @N:M (inside N..M)"


@dataclass(frozen=True)
class Range:
    start: float = 0.0
    end: float = math.inf
    inside: bool = False  # "@": alert when the value is inside start..end
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Range:
        """Parse a range; ValueError names what is wrong."""
        raw = text.strip()
        body = raw[1:] if raw.startswith("@") else raw
        if not body:
            raise ValueError(f"empty range {quote(text)}")
        if ":" in body:
            lo, _, hi = body.partition(":")
            start = -math.inf if lo == "~" else _number(lo or "0", text)
            end = math.inf if hi == "" else _number(hi, text)
        else:
            start, end = 0.0, _number(body, text)
        if start > end:
            raise ValueError(f"range {quote(text)} starts above its end")
        return cls(start, end, raw.startswith("@"), raw)

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __str__(self) -> str:
        return self.text


def _number(s: str, whole: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{quote(s)} in range {quote(whole)} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{quote(s)} in range {quote(whole)} is not a finite number")
    return v


def judge(value: float, warn: Range | None, crit: Range | None) -> int:
    """0, 1 or 2 (OK, WARN, CRIT) for a value against optional warn and crit ranges."""
    if crit is not None and crit.alerts(value):
        return 2
    if warn is not None and warn.alerts(value):
        return 1
    return 0
