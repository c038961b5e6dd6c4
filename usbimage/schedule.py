"""``[usb] schedule`` under ``steward run``: a whole-system backup to the steward drive at the
scheduled times, started like one on insertion (its own transient unit, which mails its
report). No drive plugged in at that time is an alert, not a silent skip; a time missed while
steward was stopped is not caught up (the next one comes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from agent.calendar import local_zone, next_start, parse_schedule
from agent.fileio import write_atomic
from agent.system.commands import CommandRunner
from usbimage.drive import Drive, find_drives
from usbimage.events import DriveEvent

log = logging.getLogger(__name__)
STATE = "usb-schedule.json"


class UsbSchedule:
    def __init__(self, schedule: str, runner: CommandRunner, state_dir: Path,
                 start: Callable[[Drive, str], DriveEvent]) -> None:
        self.schedule, self.runner, self.start = schedule, runner, start
        self.parsed, self.zone = parse_schedule(schedule), local_zone()
        self.path = state_dir / STATE
        self.next: datetime | None = None

    def _last(self) -> datetime | None:
        try:
            return datetime.fromisoformat(json.loads(self.path.read_text())["last"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def tick(self, now: float) -> list[DriveEvent]:
        at = datetime.fromtimestamp(now, timezone.utc)
        if self.next is None:
            last = self._last()
            self.next = next_start(self.parsed, self.zone, max(at, last) if last else at)
            log.info("next scheduled USB backup: %s", self.next.isoformat(timespec="minutes"))
        if at < self.next:
            return []
        due, self.next = self.next, next_start(self.parsed, self.zone, at)
        write_atomic(self.path, json.dumps({"last": due.isoformat()}) + "\n")
        when = due.astimezone().strftime("%a %Y-%m-%d %H:%M")
        drives = find_drives(self.runner)
        if not drives:
            return [DriveEvent("scheduled-no-drive", None, f"scheduled USB backup ({when}) "
                               "not done: no steward drive is plugged in",
                               detail=f"[usb] schedule = {self.schedule!r}; plug the drive in "
                               "and run steward backup create --usb")]
        if len(drives) > 1:
            return [DriveEvent("scheduled-no-drive", None, f"scheduled USB backup ({when}) "
                               "not done: several steward drives are plugged in",
                               detail=", ".join(d.describe() for d in drives))]
        return [self.start(drives[0], f"scheduled USB backup ({when})")]
