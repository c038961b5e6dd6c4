"""E-mail alerting policy: group, hold back flapping, remind, digest; then queue and deliver.

Alerts from the supervisor are gathered for ``group_window`` seconds so one outage is one mail.
A check whose problem was mailed less than ``cooldown`` ago and that changes again is held
back; when the cooldown ends and it is still failing, one mail says so with how often it
changed. Recoveries of mailed problems are always sent. What stays failing is reminded of with
backoff; an optional daily digest lists what is still not OK. Each recipient gets only the items
at or above their minimum severity. Mails go through the persistent Outbox; a worker thread
delivers them, so a slow or dead relay never holds up the supervisor's loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config import EmailOptions
from agent.events import Event
from agent.fileio import write_atomic
from agent.model import Status
from agent.notify.outbox import DeliveryWorker, Outbox
from agent.notify.smtp import SmtpSender
from agent.notify.templates import Templates, build_message
from agent.policy import CheckRecord

log = logging.getLogger(__name__)



@dataclass
class KeyState:
    """What the administrator last heard about one check, and what is held back."""

    mailed_at: float = 0.0  # last problem mail
    problem_status: str = "OK"  # what that problem mail said
    mailed_status: str = "OK"  # what the last mail said: a problem's status, or OK
    held: int = 0  # changes held back by the cooldown since
    remind_at: float = 0.0
    remind_every: float = 0.0


@dataclass
class MailState:
    keys: dict[str, KeyState] = field(default_factory=dict)
    digest_day: str = ""
    # Alerts in the open grouping window: on disk, so a crash inside the window loses none.
    pending: list[dict[str, Any]] = field(default_factory=list)
    window_end: float | None = None


def sender_for(opts: EmailOptions, host: str | None = None) -> SmtpSender:
    """``host`` names us in EHLO; without it smtplib asks DNS, which may hang on a sick box."""
    return SmtpSender(opts.relays, username=opts.username, password_file=opts.password_file,
                      ca_file=opts.ca_file, timeout=opts.timeout, local_hostname=host)


def send_with(sender: SmtpSender) -> Any:
    return lambda msg: [(r.relay, r.ok, r.detail) for r in sender.send(msg)]


class Mailer:
    """A Notifier: ``send`` takes alerts, ``tick`` (each supervisor pass) turns them into mail."""

    def __init__(self, opts: EmailOptions, state_dir: Path, host: str,
                 templates: Templates | None = None) -> None:
        self.opts, self.host = opts, host
        self.outbox = Outbox(Path(state_dir) / "outbox", opts.retry_max)
        self.templates = templates or Templates(opts.template_dir, opts.language)
        self._state_path = Path(state_dir) / "mail.json"
        self._state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = self._load()
        self._worker: DeliveryWorker | None = None

    def _load(self) -> MailState:
        try:
            data = json.loads(self._state_path.read_text())
            return MailState({k: KeyState(**v) for k, v in data["keys"].items()},
                             data.get("digest_day", ""), data.get("pending", []),
                             data.get("window_end"))
        except FileNotFoundError:
            return MailState()
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("%s unreadable (%s); mail state starts afresh", self._state_path, e)
            return MailState()

    def _save(self) -> None:
        write_atomic(self._state_path, json.dumps(asdict(self.state)), 0o600)

    # -- the Notifier interface --------------------------------------------------------
    def send(self, alert: Event, host: str) -> None:
        self.state.pending.append(alert.to_dict())
        if self.state.window_end is None:
            self.state.window_end = alert.since + self.opts.group_window
        self._save()

    def _take_pending(self) -> list[Event]:
        alerts = [Event.from_dict(a) for a in self.state.pending]
        self.state.pending, self.state.window_end = [], None
        return alerts

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        items: list[Event] = []
        if self.state.window_end is not None and now >= self.state.window_end:
            items += self._from_alerts(self._take_pending(), now)
        items += self._cooled_and_reminders(now, checks)
        if items:
            self._queue(items, "alert", now)
        self._maybe_digest(now, checks)

    # -- policy ------------------------------------------------------------------------
    def _from_alerts(self, alerts: Sequence[Event], now: float) -> list[Event]:
        items: dict[str, Event] = {}
        actions: dict[str, list[str]] = {}
        for a in alerts:
            k = self.state.keys.setdefault(a.check, KeyState())
            if a.kind in ("restart", "escalation"):
                actions.setdefault(a.check, []).append(a.summary)
                if a.kind == "restart":
                    continue
            elif a.kind == "problem" and now - k.mailed_at < self.opts.cooldown and \
                    a.status.severity <= Status[k.problem_status].severity:
                # Flapping, or no worse than what was said: wait for the cooldown to end.
                k.held += 1
                continue
            elif a.kind == "recovery" and k.mailed_status == "OK":
                k.held = 0  # the problem was never mailed: nothing to take back
                continue
            items[a.check] = Event(a.kind, a.check, a.status, a.summary, a.details,
                                      a.remedy, a.since, repeats=k.held)
            self._mailed(k, a.kind, a.status, now)
        for check, done in actions.items():
            item = items.get(check)
            if item is None:  # a restart notice without a fresh problem mail
                item = Event("restart", check, Status.CRIT, done[-1], since=now)
            items[check] = Event(item.kind, item.check, item.status, item.summary,
                                    item.details, item.remedy, item.since, tuple(done),
                                    item.repeats)
        return list(items.values())

    def _mailed(self, k: KeyState, kind: str, status: Status, now: float) -> None:
        k.held = 0
        if kind == "recovery":
            k.mailed_status, k.remind_at = "OK", 0.0
            return
        k.mailed_at, k.mailed_status = now, status.name
        k.problem_status = status.name
        if self.opts.reminder:
            k.remind_every = self.opts.reminder
            k.remind_at = now + self.opts.reminder

    def _cooled_and_reminders(self, now: float, checks: Mapping[str, CheckRecord]
                              ) -> list[Event]:
        out = []
        for cid, k in self.state.keys.items():
            rec = checks.get(cid)
            failing = rec is not None and rec.status != "OK" and not rec.inhibited_by
            if k.held and now - k.mailed_at >= self.opts.cooldown:
                # Say how it stands now, if that is not what the last mail said.
                if failing and rec is not None and rec.status != k.mailed_status:
                    out.append(Event("problem", cid, Status[rec.status], rec.summary,
                                        since=rec.since, repeats=k.held))
                    self._mailed(k, "problem", Status[rec.status], now)
                k.held = 0
            elif failing and rec is not None and k.remind_at and now >= k.remind_at \
                    and k.mailed_status != "OK":
                out.append(Event("reminder", cid, Status[rec.status], rec.summary,
                                    since=rec.since))
                k.remind_every = min(k.remind_every * 2, self.opts.reminder_max)
                k.remind_at = now + k.remind_every
        return out

    def _maybe_digest(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        if not self.opts.digest:
            return
        local = datetime.fromtimestamp(now)
        day = local.strftime("%Y-%m-%d")
        if self.state.digest_day == day or local.strftime("%H:%M") < self.opts.digest:
            return
        self.state.digest_day = day
        items = [Event("digest", cid, Status[r.status], r.summary, since=r.since)
                 for cid, r in sorted(checks.items()) if r.status != "OK"]
        if items:
            self._queue(items, "digest", now)
        else:
            self._save()

    # -- mail --------------------------------------------------------------------------
    def _queue(self, items: list[Event], kind: str, now: float) -> None:
        by_recipients: dict[tuple[Event, ...], list[str]] = {}
        for address, minimum in self.opts.to:
            mine = tuple(i for i in items if self._severity(i) >= Status[minimum].severity)
            if mine:
                by_recipients.setdefault(mine, []).append(address)
        for mine, to in by_recipients.items():
            subject, text, html = self.templates.render(mine, host=self.host, kind=kind, now=now)
            msg = build_message(subject, text, html, sender=self.opts.sender, to=to, kind=kind,
                                date=now)
            name = self.outbox.put(msg, now)
            log.info("mail %s queued for %s: %s", name, ", ".join(to), subject)
        self._save()
        if self._worker:
            self._worker.kick()

    def _severity(self, item: Event) -> int:
        if item.kind == "recovery":  # as severe as the problem it ends
            k = self.state.keys.get(item.check)
            return max(Status.WARN.severity, Status[k.mailed_status if k else "WARN"].severity)
        return item.status.severity

    def start(self) -> None:
        self._worker = DeliveryWorker(self.outbox, send_with(sender_for(self.opts, self.host)))
        self._worker.start()

    def stop(self) -> None:
        """Queue what the grouping window holds (nothing is lost to a stop or a reload), then
        stop delivering; the outbox keeps the rest for the next start."""
        if self.state.pending:
            now = time.time()
            items = self._from_alerts(self._take_pending(), now)
            if items:
                self._queue(items, "alert", now)
            self._save()
        if self._worker:
            self._worker.stop()
