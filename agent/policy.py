"""The per-check state machine of ``steward run``: what a run of results means.

Pure bookkeeping: given what it remembers and a pass of results, it says which alerts to send
and which units to restart; the supervisor does both and reports the restarts back. Rules:
tolerance (N failed runs within M) before anything happens; inhibited results (a dependency
fails) and results under maintenance neither act nor alert; a restart budget per unit with
backoff for restarts that did not hold and a grace period; budget spent -> escalate and stop
restarting until the unit recovers or is reset.

Backoff: a restart *held* when every result of the unit was OK in a pass at least ``SETTLE`` s
after it. The next failure of a unit whose restart held is a new failure and is restarted at
once (waiting would only lengthen the outage; the budget still bounds a unit that keeps dying).
Restarts that did not hold (the unit never came up) wait ``backoff`` s before the next one, then
twice that, and so on: a unit that fails on every start is not hammered.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.config import RestartOptions
from agent.events import Event
from agent.memory import CheckRecord, Maintenance, Memory, UnitRecord
from agent.model import Result, Status


@dataclass(frozen=True)
class Restart:
    unit: str
    check: str  # the result that asked for it
    reason: str


def settle(restart: RestartOptions) -> float:
    """Seconds after a restart from which an OK unit counts as up again (the restart held)."""
    return min(restart.grace, 2.0)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"


class Policy:
    def __init__(self, memory: Memory, restart: RestartOptions,
                 tolerance: Callable[[str], tuple[int, int]]) -> None:
        self.memory = memory
        self.restart = restart
        self.tolerance = tolerance  # check id -> (N, M)

    def evaluate(self, results: Iterable[Result], now: float,
                 maintenance: Maintenance) -> tuple[list[Event], list[Restart]]:
        results = list(results)
        for r in results:
            self._observe(r, now)
        alerts: list[Event] = []
        restarts: dict[str, Restart] = {}
        for r in results:
            rec = self.memory.checks[r.check]
            rec.inhibited_by = self._blocker(r)
            if rec.inhibited_by or maintenance.covers(r.unit, now):
                continue
            if rec.status is not rec.alerted:
                kind = "recovery" if rec.status is Status.OK else "problem"
                alerts.append(Event(kind, r.check, rec.status, rec.summary, r.details,
                                    r.remedy, rec.since))
                rec.alerted = rec.status
            if (self.restart.enabled and r.unit and r.restartable and r.unit not in restarts
                    and r.status is Status.CRIT and rec.status is Status.CRIT):
                decision = self._restart_or_escalate(r, now)
                if isinstance(decision, Restart):
                    restarts[r.unit] = decision
                elif decision is not None:
                    alerts.append(decision)
        self._held(results, now)
        self._clear_recovered()
        return alerts, list(restarts.values())

    def _observe(self, r: Result, now: float) -> None:
        rec = self.memory.checks.setdefault(r.check, CheckRecord(since=now))
        n, m = self.tolerance(r.check)
        rec.runs = ([*rec.runs, int(r.status is not Status.OK)])[-m:]
        if r.status is Status.OK or sum(rec.runs) >= n:
            if r.status is not rec.status:
                rec.since = now
            rec.status, rec.summary = r.status, r.summary
        rec.unit = r.unit

    def _held(self, results: list[Result], now: float) -> None:
        """A unit all of whose results in this pass are OK, settled after its last restart:
        that restart held, so its next failure is restarted without backoff."""
        bad = {r.unit for r in results if r.unit and r.status is not Status.OK}
        for name in {r.unit for r in results if r.unit} - bad:
            unit = self.memory.units.get(name)
            if unit and unit.restarts and now >= unit.restarts[-1] + settle(self.restart):
                unit.streak, unit.next_at = 0, 0.0

    def _blocker(self, r: Result) -> str:
        for cid, rec in self.memory.checks.items():
            if cid != r.check and rec.status is not Status.OK and any(
                    fnmatch.fnmatchcase(cid, p) for p in r.depends_on):
                return cid
        return ""

    def _restart_or_escalate(self, r: Result, now: float) -> Restart | Event | None:
        unit = self.memory.units.setdefault(r.unit, UnitRecord())
        if unit.escalated:
            return None
        opts = self.restart
        unit.restarts = [t for t in unit.restarts if now - t < opts.window]
        if len(unit.restarts) >= opts.budget:
            if now < unit.restarts[-1] + opts.grace:
                return None  # the last restart still has its grace period
            unit.escalated = (f"{len(unit.restarts)} restarts within "
                              f"{_minutes(opts.window)} did not help")
            return self.escalation(r.unit, r.check, unit.escalated, now)
        if now < unit.next_at:
            return None
        return Restart(r.unit, r.check, r.summary)

    def escalation(self, unit: str, check: str, why: str, now: float) -> Event:
        return Event("escalation", check, Status.CRIT, f"restart did not help: {why}",
                     remedy=f"find the cause: journalctl -u {unit} -b -n 100; steward stopped "
                     f"restarting {unit} until it recovers or you run: steward reset {unit}",
                     since=now)

    def restarted(self, restart: Restart, now: float, error: str, action: str) -> list[Event]:
        """Record the outcome of a restart the supervisor carried out."""
        unit = self.memory.units.setdefault(restart.unit, UnitRecord())
        if error:
            unit.escalated = f"restarting failed: {error}"
            unit.last_action = f"{action} failed"
            return [self.escalation(restart.unit, restart.check, unit.escalated, now)]
        unit.restarts.append(now)
        k = len(unit.restarts)
        unit.streak += 1
        unit.next_at = now + max(self.restart.grace,
                                 self.restart.backoff * 2 ** (unit.streak - 1))
        unit.last_action = action
        return [Event("restart", restart.check, Status.CRIT,
                      f"steward ran: {action} ({k} of {self.restart.budget} within "
                      f"{_minutes(self.restart.window)})", details=restart.reason, since=now)]

    def _clear_recovered(self) -> None:
        for name, unit in self.memory.units.items():
            recs = [r for r in self.memory.checks.values() if r.unit == name]
            if unit.escalated and recs and all(r.status is Status.OK for r in recs):
                unit.escalated = ""

    def reset(self, unit: str) -> bool:
        """Forget a unit's restarts and escalation (``steward reset UNIT``)."""
        return self.memory.units.pop(unit, None) is not None
