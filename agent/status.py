"""Status: a check's outcome in Nagios order, and which of several is the worst. The one type
every layer speaks, the configuration's severity settings included, so it stands on its own:
agent.model (Result, Check) builds on it and hands it on to plugins."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class Status(IntEnum):
    """Check outcome, in Nagios order; the value is the plugin exit code."""

    OK = 0
    WARN = 1
    CRIT = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Rank for "worst": UNKNOWN sits between WARN and CRIT, as Nagios treats it."""
        return _SEVERITY[self]

    @property
    def long_name(self) -> str:
        return _LONG[self]


_SEVERITY = {Status.OK: 0, Status.WARN: 1, Status.UNKNOWN: 2, Status.CRIT: 3}
_LONG = {Status.OK: "OK", Status.WARN: "WARNING", Status.CRIT: "CRITICAL",
         Status.UNKNOWN: "UNKNOWN"}


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status (CRIT > UNKNOWN > WARN > OK); OK for nothing at all."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)
