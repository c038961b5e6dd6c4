"""The ``email`` action: ``[notify.email]`` (recipients, relays, grouping, cooldown,
reminders, digest), mailed through the persistent outbox (agent.notify.mailer). Off while no
recipient is configured."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from agent.config import EmailOptions
from agent.notify import Notifier


class EmailAction:
    name: ClassVar[str] = "email"
    Options: ClassVar[type[EmailOptions]] = EmailOptions

    @classmethod
    def create(cls, options: EmailOptions, state_dir: Path, host: str) -> Notifier | None:
        if not options.enabled:
            return None
        from agent.notify.mailer import Mailer  # smtplib and jinja2 load only with mail

        return Mailer(options, state_dir, host)
