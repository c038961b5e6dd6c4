"""How alerts leave steward: the Notifier interface, the journal, and e-mail (mailer.py)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from agent.config import Config
from agent.policy import Alert, CheckRecord

log = logging.getLogger("steward.alert")


class Notifier(Protocol):
    def send(self, alert: Alert, host: str) -> None: ...
    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class LogNotifier:
    """One line per alert, ``ALERT host kind STATUS check: summary``; under systemd, the
    journal keeps them."""

    def send(self, alert: Alert, host: str) -> None:
        log.warning("ALERT %s %s %s %s: %s%s", host, alert.kind, alert.status.name,
                    alert.check, alert.summary,
                    f" | remedy: {alert.remedy}" if alert.remedy else "")

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class Notifiers:
    """Every alert to each notifier; one failing never keeps it from the others."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def _each(self, what: str, *args: object) -> None:
        for n in self.notifiers:
            try:
                getattr(n, what)(*args)
            except Exception:
                log.exception("%s.%s failed", type(n).__name__, what)

    def send(self, alert: Alert, host: str) -> None:
        self._each("send", alert, host)

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        self._each("tick", now, checks)

    def start(self) -> None:
        self._each("start")

    def stop(self) -> None:
        self._each("stop")


def for_config(config: Config, state_dir: Path, host: str) -> Notifiers:
    """The journal always; e-mail when recipients are configured."""
    notifiers: list[Notifier] = [LogNotifier()]
    if config.email.enabled:
        from agent.notify.mailer import Mailer
        notifiers.append(Mailer(config.email, state_dir, host))
    return Notifiers(notifiers)
