"""How alerts leave steward. The Notifier interface; mail delivery comes with issue [C], until
then alerts are logged (under systemd: to the journal, one line each, greppable by ALERT)."""

from __future__ import annotations

import logging
from typing import Protocol

from agent.policy import Alert

log = logging.getLogger("steward.alert")


class Notifier(Protocol):
    def send(self, alert: Alert, host: str) -> None: ...


class LogNotifier:
    def send(self, alert: Alert, host: str) -> None:
        log.warning("ALERT %s %s %s %s: %s%s", host, alert.kind, alert.status.name,
                    alert.check, alert.summary,
                    f" | remedy: {alert.remedy}" if alert.remedy else "")
