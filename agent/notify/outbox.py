"""The persistent outbox: a mail leaves it only after a relay accepted it.

One message per file (``<queued-at>-<id>.eml``, written to a temp name, fsynced, renamed), with
a small sidecar (``.json``) holding attempts and the next try. A crash between a relay's
acceptance and the removal sends the same file again at most once more, with the same
Message-ID, so mail clients fold the duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.fileio import write_atomic

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


Send = Callable[["EmailMessage"], Sequence[tuple[str, bool, str]]]


class Outbox:
    def __init__(self, path: Path, retry_max: float = 1800.0) -> None:
        self.path = Path(path)
        self.retry_max = retry_max

    def put(self, msg: EmailMessage, now: float) -> str:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{now:.6f}-{uuid.uuid4().hex[:12]}"
        self._meta(name, Queued(name, now, 0, now, ""))
        write_atomic(self.path / f"{name}.eml", msg.as_string(), 0o600)
        return name

    def _meta(self, name: str, q: Queued) -> None:
        write_atomic(self.path / f"{name}.json", json.dumps(
            {"queued_at": q.queued_at, "attempts": q.attempts, "next_at": q.next_at,
             "last_error": q.last_error}), 0o600)

    def queued(self) -> list[Queued]:
        """What waits, oldest first. A message without readable metadata is due now."""
        out = []
        try:
            names = sorted(p.name[:-4] for p in self.path.iterdir() if p.name.endswith(".eml"))
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

    def load(self, name: str) -> EmailMessage:
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
            results = send(msg)
            delivered = bool(results) and results[-1][1]
            done.append(Attempt(q.name, str(msg["Subject"]), delivered, results))
            if delivered:
                # Accepted: the message goes first, so a crash here leaves no orphan mail.
                os.unlink(self.path / f"{q.name}.eml")
                os.unlink(self.path / f"{q.name}.json")
                continue
            wait = min(self.retry_max, FIRST_RETRY * 2 ** q.attempts)
            error = "; ".join(f"{r}: {d}" for r, _, d in results) or "no relay configured"
            self._meta(q.name, Queued(q.name, q.queued_at, q.attempts + 1, now + wait, error))
            log.warning("mail %s not delivered (attempt %d), next try in %.0f s: %s",
                        msg["Message-ID"], q.attempts + 1, wait, error)
        return done
