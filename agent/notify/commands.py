"""``steward notify test`` and ``steward notify flush``, and mailing a report now (patch,
backup to USB) through the outbox."""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TextIO

from agent.config import Config
from agent.config.sections import EmailOptions
from agent.errors import UsageError
from agent.events import Event
from agent.model import Status
from agent.notify.mailer import send_with, sender_for
from agent.notify.outbox import Attempt, Outbox
from agent.notify.templates import Templates, build_message
from agent.system.clock import Clock


def _email(config: Config) -> Config:
    if not config.email.enabled:
        raise UsageError(f"{config.source}: no [notify.email] recipients (to = [...]) "
                         "configured")
    return config


def mail_now(msg: EmailMessage, opts: EmailOptions, state_dir: Path, host: str,
             stream: TextIO) -> bool:
    """Queue a report in the outbox and try to deliver it now; say on ``stream`` what became
    of it. Not delivered, it stays queued and steward run retries it (nothing is lost)."""
    now = Clock().now()
    outbox = Outbox(state_dir / "outbox", opts.retry_max)
    name = outbox.put(msg, now)
    attempts = outbox.deliver(send_with(sender_for(opts, host)), now, only=name)
    delivered = bool(attempts) and attempts[-1].delivered
    if delivered:
        relay = next((r for r, ok, _ in attempts[-1].relays if ok), "")
        stream.write(f"report mailed to {', '.join(a for a, _ in opts.to)} via {relay}\n")
    else:
        why = "; ".join(f"{r}: {d}" for a in attempts for r, _, d in a.relays) or "no relay"
        stream.write(f"report NOT delivered ({why}): it stays queued in {outbox.path}; "
                     "steward run retries it\n")
    stream.flush()
    return delivered


def _print(attempts: Sequence[Attempt]) -> None:
    for a in attempts:
        print(f"{a.subject}")
        for relay, ok, detail in a.relays:
            print(f"  {relay}: {'accepted' if ok else 'FAILED'}: {detail}")


def cmd_test(config: Config, state_dir: Path, host: str) -> int:
    """Queue a test mail to every recipient and try to deliver it now; 0 if a relay took it."""
    opts = _email(config).email
    now = Clock().now()
    item = Event("test", "notify", Status.OK, f"test mail from steward on {host}",
                    details=f"relays, in order: {', '.join(opts.relays)}", since=now)
    templates = Templates(opts.template_dir, opts.language)
    subject, text, html = templates.render([item], host=host, kind="test", now=now)
    msg = build_message(subject, text, html, sender=opts.sender, kind="test",
                        to=[address for address, _ in opts.to], date=now)
    outbox = Outbox(state_dir / "outbox", opts.retry_max)
    name = outbox.put(msg, now)
    attempts = outbox.deliver(send_with(sender_for(opts, host)), now, only=name)
    _print(attempts)
    if attempts and attempts[-1].delivered:
        print(f"delivered: {msg['Message-ID']}")
        return 0
    print(f"not delivered: the test mail stays queued in {outbox.path}; steward run retries it")
    return 1


def cmd_flush(config: Config, state_dir: Path) -> int:
    """Try every queued mail now; 0 if the outbox is empty afterwards."""
    opts = _email(config).email
    outbox = Outbox(state_dir / "outbox", opts.retry_max)
    attempts = outbox.deliver(send_with(sender_for(opts)), Clock().now(), force=True)
    _print(attempts)
    left = len(outbox.queued())
    print(f"delivered {sum(a.delivered for a in attempts)}, {left} still queued")
    return 0 if not left else 1


def cmd_outbox(config: Config, state_dir: Path, fmt: str) -> int:
    """The recipients and what waits in the outbox, oldest first (the outbox needs no
    recipients configured to be listed: mail queued before they were removed still waits)."""
    import json

    opts = config.email
    outbox = Outbox(state_dir / "outbox", opts.retry_max)
    queued: list[dict[str, Any]] = []
    for q in outbox.queued():
        try:
            subject = str(outbox.load(q.name)["Subject"] or "")
        except (OSError, ValueError):
            subject = ""
        queued.append({"id": q.name, "subject": subject, "queued_at": q.queued_at,
                       "attempts": q.attempts, "next_at": q.next_at,
                       "last_error": q.last_error})
    recipients = [address for address, _ in opts.to]
    if fmt == "json":
        print(json.dumps({"recipients": recipients, "relays": list(opts.relays),
                          "language": opts.language, "queued": queued}, indent=1))
        return 0
    print(f"recipients: {', '.join(recipients) or 'none configured'}")
    print(f"relays: {', '.join(opts.relays) or 'none configured'}")
    print(f"{len(queued)} mail(s) waiting in {outbox.path}")
    for m in queued:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["queued_at"]))
        print(f"  since {since}, {m['attempts']} attempt(s): {m['subject']}"
              + (f" (last error: {m['last_error']})" if m["last_error"] else ""))
    return 0
