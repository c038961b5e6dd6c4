"""The persistent outbox: a mail (or a webhook's event) leaves it only after a relay (the
endpoint) accepted it; a worker thread delivers what is due.

One message per file (``<queued-at>-<id>.eml``, written to a temp name, fsynced, renamed), with
a small sidecar (``.json``) holding attempts and the next try. A crash between a relay's
acceptance and the removal sends the same file again at most once more, with the same
Message-ID, so mail clients fold the duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.fileio import write_atomic
from agent.system.clock import Clock

if TYPE_CHECKING:  # the email package loads when mail is parsed, not with steward check
    from email.message import EmailMessage

log = logging.getLogger(__name__)

FIRST_RETRY = 30.0  # seconds; doubles per failed attempt up to retry_max


@dataclass(frozen=True)
class Queued:
    name: str
    queued_at: float
    attempts: int
    next_at: float
    last_error: str


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt of one queued message: each relay tried, and whether one took it."""

    name: str
    subject: str
    delivered: bool
    relays: Sequence[tuple[str, bool, str]]  # (relay url, accepted, detail)


Send = Callable[[Any], Sequence[tuple[str, bool, str]]]  # the message -> relays tried


class Outbox:
    SUFFIX = ".eml"

    def __init__(self, path: Path, retry_max: float = 1800.0) -> None:
        self.path = Path(path)
        self.retry_max = retry_max

    def put(self, msg: EmailMessage, now: float) -> str:
        return self.put_text(msg.as_string(), now)

    def put_text(self, text: str, now: float) -> str:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{now:.6f}-{uuid.uuid4().hex[:12]}"
        self._meta(name, Queued(name, now, 0, now, ""))
        write_atomic(self.path / f"{name}{self.SUFFIX}", text, 0o600)
        return name

    def _meta(self, name: str, q: Queued) -> None:
        write_atomic(self.path / f"{name}.json", json.dumps(
            {"queued_at": q.queued_at, "attempts": q.attempts, "next_at": q.next_at,
             "last_error": q.last_error}), 0o600)

    def queued(self) -> list[Queued]:
        """What waits, oldest first. A message without readable metadata is due now."""
        out = []
        try:
            names = sorted(p.name[:-len(self.SUFFIX)] for p in self.path.iterdir()
                           if p.name.endswith(self.SUFFIX))
        except FileNotFoundError:
            return []
        for name in names:
            try:
                meta = json.loads((self.path / f"{name}.json").read_text())
                out.append(Queued(name, meta["queued_at"], meta["attempts"], meta["next_at"],
                                  meta["last_error"]))
            except (OSError, ValueError, KeyError):
                queued_at = float(name.split("-", 1)[0])
                out.append(Queued(name, queued_at, 0, queued_at, ""))
        return out

    def label(self, msg: Any) -> tuple[str, str]:
        """(subject, id) of a loaded message, for the log."""
        return str(msg["Subject"]), str(msg["Message-ID"])

    def load(self, name: str) -> Any:
        import email
        import email.policy
        from email.message import EmailMessage

        raw = (self.path / f"{name}.eml").read_bytes()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def deliver(self, send: Send, now: float, force: bool = False,
                only: str | None = None) -> list[Attempt]:
        """Try every message that is due (all of them with ``force``; just ``only``)."""
        done = []
        for q in self.queued():
            if (only is not None and q.name != only) or (
                    only is None and not force and q.next_at > now):
                continue
            msg = self.load(q.name)
            subject, ident = self.label(msg)
            results = send(msg)
            delivered = bool(results) and results[-1][1]
            done.append(Attempt(q.name, subject, delivered, results))
            if delivered:
                # Accepted: the message goes first, so a crash here leaves no orphan mail.
                os.unlink(self.path / f"{q.name}{self.SUFFIX}")
                os.unlink(self.path / f"{q.name}.json")
                continue
            wait = min(self.retry_max, FIRST_RETRY * 2 ** q.attempts)
            error = "; ".join(f"{r}: {d}" for r, _, d in results) or "no relay configured"
            self._meta(q.name, Queued(q.name, q.queued_at, q.attempts + 1, now + wait, error))
            log.warning("%s %s not delivered (attempt %d), next try in %.0f s: %s",
                        "mail" if self.SUFFIX == ".eml" else "event", ident, q.attempts + 1,
                        wait, error)
        return done


class DeliveryWorker:
    """Delivers what is due from the outbox in its own thread."""

    def __init__(self, outbox: Outbox, send: Send, idle: float = 60.0, *, what: str = "mail",
                 retry_at_start: bool = False, clock: Clock | None = None) -> None:
        self.outbox, self.send, self.what = outbox, send, what
        self.clock = clock or Clock()
        self.idle = idle
        self._force = retry_at_start  # the first round tries every message, due or not
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"{what} delivery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop:
            try:
                report(self.outbox.deliver(self.send, self.clock.now(), force=self._force),
                       self.what)
            except Exception:  # keep delivering whatever one message did
                log.exception("%s delivery failed", self.what)
            self._force = False
            due = [q.next_at for q in self.outbox.queued()]
            wait = min([max(0.0, t - self.clock.now()) for t in due] + [self.idle])
            self._wake.wait(wait)
            self._wake.clear()


def report(attempts: Sequence[Attempt], what: str = "mail") -> None:
    for a in attempts:
        if a.delivered:
            log.info("%s delivered via %s: %s", what, a.relays[-1][0], a.subject)


class RawOutbox(Outbox):
    """An outbox of JSON bodies (the webhook's events), ``<queued-at>-<id>.body``."""

    SUFFIX = ".body"

    def load(self, name: str) -> bytes:
        return (self.path / f"{name}{self.SUFFIX}").read_bytes()

    def label(self, msg: Any) -> tuple[str, str]:
        try:
            body = json.loads(msg)
            first = body[0]["labels"] if isinstance(body, list) else body
            return f"{first.get('check', '?')} {first.get('status', first.get('severity', ''))}", \
                str(first.get("check", "?"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return "?", "?"
