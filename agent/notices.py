"""The alert half of the policy: of what the check policy announces (agent.policy), what is
told now and what waits, and what is said later. Every action gets the same decisions; the
route of each ([alerts] route) only picks which of them it takes.

- **Cooldown and flapping**: a problem no worse than the last problem told, within
  ``cooldown`` s of it, waits; so do the changes after it. When the cooldown ends and the
  check stands elsewhere than the last notice said, one problem notice says so, with how
  many changes were held back (``repeats``). A worse status is told at once.
- **Recoveries** of problems told are always told, with the worst status told (``was``), so
  they reach each action the problem reached.
- **Reminders** of what stays failing, after ``reminder`` s, then twice as long each time up
  to ``reminder_max``.
- **Digest**: once a day at ``digest`` (local time), everything not OK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from agent.config import AlertOptions
from agent.events import Event
from agent.memory import CheckRecord, Memory, NoticeRecord
from agent.model import Status


class Notices:
    def __init__(self, memory: Memory, opts: AlertOptions) -> None:
        self.memory, self.opts = memory, opts

    def decide(self, events: Iterable[Event], now: float) -> list[Event]:
        """The events the check policy and the sources announced, those held back marked
        ``held`` (a log takes them; the routes of the others leave them out)."""
        out: list[Event] = []
        for e in events:
            if e.kind == "problem":
                k = self.memory.notices.setdefault(e.check, NoticeRecord())
                if now - k.told_at < self.opts.cooldown and \
                        e.status.severity <= k.problem.severity:
                    k.held += 1  # flapping, or no worse than what was said: wait
                    out.append(replace(e, held=True))
                    continue
                out.append(replace(e, repeats=k.held))
                self._told(k, e.status, now)
            elif e.kind == "recovery":
                found = self.memory.notices.get(e.check)
                if found is None:  # state from before notices were kept: tell it
                    out.append(e)
                elif found.told is Status.OK:
                    found.held += 1  # its problem waits in the cooldown: so does this
                    out.append(replace(e, held=True))
                else:
                    out.append(replace(e, repeats=found.held, was=found.worst))
                    self._told(found, Status.OK, now)
            else:
                out.append(e)
        return out

    def later(self, now: float, checks: Mapping[str, CheckRecord]) -> list[Event]:
        """What is due now: the word after a cooldown, reminders, the digest."""
        out: list[Event] = []
        for cid, k in self.memory.notices.items():
            rec = checks.get(cid)
            failing = rec is not None and rec.status is not Status.OK and not rec.inhibited_by
            if k.held and now - k.told_at >= self.opts.cooldown:
                if failing and rec is not None and rec.status is not k.told:
                    out.append(Event("problem", cid, rec.status, rec.summary, since=rec.since,
                                     repeats=k.held))
                    self._told(k, rec.status, now)
                k.held = 0
            elif failing and rec is not None and k.remind_at and now >= k.remind_at and \
                    k.told is not Status.OK:
                out.append(Event("reminder", cid, rec.status, rec.summary, since=rec.since))
                k.remind_every = min(k.remind_every * 2, self.opts.reminder_max)
                k.remind_at = now + k.remind_every
        return out + self._digest(now, checks)

    def _told(self, k: NoticeRecord, status: Status, now: float) -> None:
        k.held = 0
        if status is Status.OK:
            k.told, k.worst, k.remind_at = Status.OK, Status.OK, 0.0
            return
        k.told_at, k.told = now, status
        k.problem = status
        k.worst = max(k.worst, status, key=lambda s: s.severity)
        if self.opts.reminder:
            k.remind_every = self.opts.reminder
            k.remind_at = now + self.opts.reminder

    def _digest(self, now: float, checks: Mapping[str, CheckRecord]) -> list[Event]:
        if not self.opts.digest:
            return []
        local = datetime.fromtimestamp(now)
        day = local.strftime("%Y-%m-%d")
        if self.memory.digest_day == day or local.strftime("%H:%M") < self.opts.digest:
            return []
        self.memory.digest_day = day
        return [Event("digest", cid, r.status, r.summary, since=r.since)
                for cid, r in sorted(checks.items()) if r.status is not Status.OK]
