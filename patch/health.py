"""Health around a patch: every enabled check run once (what ``steward check`` runs), and what
got worse or better between two such runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.env import Env
from agent.model import Result, Status
from agent.registry import Registry
from agent.runner import run_all


@dataclass(frozen=True)
class Health:
    results: tuple[Result, ...]
    seconds: float

    @property
    def status(self) -> Status:
        return max((r.status for r in self.results), key=lambda s: s.severity,
                   default=Status.OK)

    def by_id(self) -> dict[str, Result]:
        return {r.check: r for r in self.results}

    def counts(self) -> str:
        """"20 OK, 2 WARN, 1 CRIT" (statuses that occur, worst last)."""
        n = {s: sum(r.status is s for r in self.results) for s in Status}
        parts = [f"{n[s]} {s.name}" for s in sorted(Status, key=lambda s: s.severity) if n[s]]
        return ", ".join(parts) or "no results"


@dataclass(frozen=True)
class Shift:
    """One check whose status differs between two runs (None: no such result that time)."""

    check: str
    before: Status | None
    after: Status | None
    summary: str  # what the later run said (the earlier one's, for a result that is gone)

    def __str__(self) -> str:
        was = self.before.name if self.before is not None else "(new)"
        now = self.after.name if self.after is not None else "(gone)"
        return f"{self.check}: {was} -> {now}: {self.summary}"


def check_health(registry: Registry, env: Env) -> Health:
    report = run_all(registry, env)
    return Health(tuple(sorted(report.results, key=lambda r: r.check)), report.duration)


def worse(before: Health, after: Health) -> list[Shift]:
    """Results that got worse: OK -> WARN/UNKNOWN/CRIT, WARN -> UNKNOWN/CRIT, UNKNOWN ->
    CRIT, and results not there before that are not OK (a check that newly fails)."""
    was = before.by_id()
    out = []
    for r in after.results:
        old = was.get(r.check)
        if r.status is not Status.OK and (old is None or
                                          r.status.severity > old.status.severity):
            out.append(Shift(r.check, old.status if old else None, r.status, r.summary))
    return _ordered(out)


def better(before: Health, after: Health) -> list[Shift]:
    """Results that were not OK before and are better now (or gone)."""
    now = after.by_id()
    out = []
    for r in before.results:
        new = now.get(r.check)
        if r.status is not Status.OK and (new is None or
                                          new.status.severity < r.status.severity):
            out.append(Shift(r.check, r.status, new.status if new else None,
                             new.summary if new else r.summary))
    return _ordered(out)


def _ordered(shifts: Sequence[Shift]) -> list[Shift]:
    return sorted(shifts, key=lambda s: (-(s.after.severity if s.after else 0), s.check))
