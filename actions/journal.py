"""The ``journal`` action: one line per event, ``ALERT host kind STATUS check: summary``;
under systemd the journal keeps them. Always on; it has no options. Being the log, its route
takes the changes the cooldown holds back too (``HELD host kind ...``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from agent.config.sections import Route
from agent.events import Event
from agent.memory import CheckRecord

log = logging.getLogger("steward.alert")


class JournalAction:
    name: ClassVar[str] = "journal"
    Options: ClassVar[Any] = None
    ROUTE: ClassVar[Route] = Route(held=True)  # a log: every change, the held-back ones too

    @classmethod
    def create(cls, options: None, state_dir: Path, host: str) -> JournalAction:
        return cls()

    def send(self, event: Event, host: str) -> None:
        log.warning("%s %s %s %s %s: %s%s", "HELD" if event.held else "ALERT", host, event.kind,
                    event.status.name, event.check, event.summary,
                    f" | remedy: {event.remedy}" if event.remedy else "")

    def tick(self, now: float, checks: Mapping[str, CheckRecord]) -> None:
        return None

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None
