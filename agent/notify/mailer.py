"""The e-mail action's work: gather events into mails, queue them, deliver them.

What is told, and when, is the policy's (agent.notices: cooldown, flapping, reminders, the
digest); the mailer only shapes it into mail. Events are gathered for ``group_window``
seconds so that one outage is one mail, what steward did about a check (restarts, giving up)
joins that check's item, a digest is a mail of its own, and each recipient gets only the
items at or above their minimum severity. The open window is on disk (a crash inside it loses
no event); mails go through the persistent Outbox, and a worker thread delivers them, so a
slow or dead relay never holds up the supervisor's loop.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import EmailOptions
from agent.events import Event
from agent.fileio import write_atomic
from agent.memory import CheckRecord
from agent.model import Status
from agent.notify.outbox import DeliveryWorker, Outbox
from agent.notify.smtp import SmtpSender
from agent.notify.templates import Templates, build_message
from agent.system.clock import Clock

log = logging.getLogger(__name__)


@dataclass
class MailState:
    # Events in the open grouping window: on disk, so a crash inside the window loses none.
    pending: list[dict[str, Any]] = field(default_factory=list)
    window_end: float | None = None


def sender_for(opts: EmailOptions, host: str | None = None) -> SmtpSender:
    """``host`` names us in EHLO; without it smtplib asks DNS, which may hang on a sick box."""
    return SmtpSender(opts.relays, username=opts.username, password_file=opts.password_file,
                      ca_file=opts.ca_file, timeout=opts.timeout, local_hostname=host)


def send_with(sender: SmtpSender) -> Any:
    return lambda msg: [(r.relay, r.ok, r.detail) for r in sender.send(msg)]


class Mailer:
    """A Notifier: ``send`` takes events, ``tick`` (each supervisor pass) turns them into mail."""

    def __init__(self, opts: EmailOptions, state_dir: Path, host: str,
                 templates: Templates | None = None, clock: Clock | None = None) -> None:
        self.opts, self.host, self.clock = opts, host, clock or Clock()
        self.outbox = Outbox(Path(state_dir) / "outbox", opts.retry_max)
        self.templates = templates or Templates(opts.template_dir, opts.language)
        self._state_path = Path(state_dir) / "mail.json"
        self._state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = self._load()
        self._worker: DeliveryWorker | None = None

    def _load(self) -> MailState:
        try:
            data = json.loads(self._state_path.read_text())
            return MailState(list(data.get("pending", [])), data.get("window_end"))
        except FileNotFoundError:
            return MailState()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("%s unreadable (%s); mail state starts afresh", self._state_path, e)
            return MailState()

    def _save(self) -> None:
        write_atomic(self._state_path, json.dumps(asdict(self.state)), 0o600)

    # -- the Notifier interface --------------------------------------------------------
    def send(self, event: Event, host: str) -> None:
        self.state.pending.append(event.to_dict())
        if self.state.window_end is None:
            self.state.window_end = self.clock.now() + self.opts.group_window
        self._save()

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        if self.state.window_end is not None and now >= self.state.window_end:
            self._flush(now)

    def _flush(self, now: float) -> None:
        events = [Event.from_dict(a) for a in self.state.pending]
        self.state.pending, self.state.window_end = [], None
        digest = [e for e in events if e.kind == "digest"]
        items = grouped([e for e in events if e.kind != "digest"], now)
        for found, kind in ((items, "alert"), (digest, "digest")):
            if found:
                self._queue(found, kind, now)
        self._save()
        if self._worker:
            self._worker.kick()

    # -- mail --------------------------------------------------------------------------
    def _queue(self, items: list[Event], kind: str, now: float) -> None:
        by_recipients: dict[tuple[Event, ...], list[str]] = {}
        for address, minimum in self.opts.to:
            mine = tuple(i for i in items if i.severity >= Status[minimum].severity)
            if mine:
                by_recipients.setdefault(mine, []).append(address)
        for mine, to in by_recipients.items():
            subject, text, html = self.templates.render(mine, host=self.host, kind=kind, now=now)
            msg = build_message(subject, text, html, sender=self.opts.sender, to=to, kind=kind,
                                date=now)
            name = self.outbox.put(msg, now)
            log.info("mail %s queued for %s: %s", name, ", ".join(to), subject)

    def start(self) -> None:
        self._worker = DeliveryWorker(self.outbox, send_with(sender_for(self.opts, self.host)))
        self._worker.start()

    def stop(self) -> None:
        """Queue what the grouping window holds (nothing is lost to a stop or a reload), then
        stop delivering; the outbox keeps the rest for the next start."""
        if self.state.pending:
            self._flush(self.clock.now())
        if self._worker:
            self._worker.stop()


def grouped(events: Sequence[Event], now: float) -> list[Event]:
    """One item per check: its latest word, with what steward did about it (restarts, giving
    up) listed in ``actions``; a restart with no other word of its check is an item itself."""
    items: dict[str, Event] = {}
    done: dict[str, list[str]] = {}
    for e in events:
        if e.kind in ("restart", "escalation"):
            done.setdefault(e.check, []).append(e.summary)
            if e.kind == "restart":
                continue
        items[e.check] = e
    for check, summaries in done.items():
        item = items.get(check) or Event("restart", check, Status.CRIT, summaries[-1],
                                         since=now)
        items[check] = replace(item, actions=tuple(summaries))
    return list(items.values())
