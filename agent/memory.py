"""What ``steward run`` remembers across its own restarts (``<state>/state.json``): each
check's confirmed status, each unit's restarts, what the administrator was told; and the
maintenance windows. Statuses are Status members here and their names on disk."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agent.model import Status

_STATUS_FIELDS = {"status", "alerted", "told", "worst", "problem"}


@dataclass
class CheckRecord:
    status: Status = Status.OK  # confirmed status, after tolerance
    since: float = 0.0  # when it entered that status (wall clock)
    summary: str = ""
    unit: str = ""
    runs: list[int] = field(default_factory=list)  # recent runs, 1 = not OK, newest last
    alerted: Status = Status.OK  # the last confirmed change the policy announced
    inhibited_by: str = ""  # the failing dependency, while there is one


@dataclass
class UnitRecord:
    restarts: list[float] = field(default_factory=list)  # steward's restarts in the window
    next_at: float = 0.0  # no restart before this (grace and backoff)
    escalated: str = ""  # why restarting stopped; empty while restarting may help
    last_action: str = ""
    streak: int = 0  # restarts in a row that did not hold (the unit never came up OK)


@dataclass
class NoticeRecord:
    """What the administrator last heard about one check (agent.notices), and what waits."""

    told_at: float = 0.0  # the last problem notice
    problem: Status = Status.OK  # what that problem notice said
    told: Status = Status.OK  # what the last notice said: a problem's status, or OK
    worst: Status = Status.OK  # the worst status told since the check was last OK
    held: int = 0  # changes held back by the cooldown since
    remind_at: float = 0.0
    remind_every: float = 0.0


def _plain(record: Any) -> dict[str, Any]:
    return {k: v.name if isinstance(v, Status) else v for k, v in asdict(record).items()}


def _record(cls: type[Any], data: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: Status[v] if k in _STATUS_FIELDS else v
                  for k, v in data.items() if k in known})


@dataclass
class Memory:
    checks: dict[str, CheckRecord] = field(default_factory=dict)
    units: dict[str, UnitRecord] = field(default_factory=dict)
    notices: dict[str, NoticeRecord] = field(default_factory=dict)
    digest_day: str = ""  # the day the last daily digest went out

    def to_dict(self) -> dict[str, Any]:
        return {"checks": {k: _plain(v) for k, v in self.checks.items()},
                "units": {k: asdict(v) for k, v in self.units.items()},
                "notices": {k: _plain(v) for k, v in self.notices.items()},
                "digest_day": self.digest_day}

    def essence(self) -> str:
        """What must reach the disk: everything but the summaries, which change every run."""
        d = self.to_dict()
        for rec in d["checks"].values():
            rec.pop("summary")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Memory:
        return cls({k: _record(CheckRecord, v) for k, v in data.get("checks", {}).items()},
                   {k: _record(UnitRecord, v) for k, v in data.get("units", {}).items()},
                   {k: _record(NoticeRecord, v) for k, v in data.get("notices", {}).items()},
                   str(data.get("digest_day", "")))


@dataclass
class Maintenance:
    """Maintenance mode: the whole machine until ``until``, or some units each until a time."""

    until: float | None = None
    units: dict[str, float] = field(default_factory=dict)

    def covers(self, unit: str, now: float) -> bool:
        if self.until is not None and now < self.until:
            return True
        return bool(unit) and now < self.units.get(unit, 0.0)

    def active(self, now: float) -> bool:
        return self.covers("", now) or any(now < t for t in self.units.values())
