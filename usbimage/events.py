"""What the USB monitor and the USB schedule found, for the supervisor to alert on or log:
one module of its own, which both import (the schedule is started by the monitor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.events import Event
from agent.model import Status

if TYPE_CHECKING:
    from usbimage.drive import Drive


@dataclass(frozen=True)
class DriveEvent:
    kind: str  # inserted (notify) | backup-started | backup-not-started | ignored |
    #            scheduled-no-drive
    drive: Drive | None
    summary: str
    detail: str = ""
    unit: str = ""

    @property
    def alert(self) -> bool:
        """Whether the administrator should hear of it (the rest goes to the journal)."""
        return self.kind in ("inserted", "backup-not-started", "scheduled-no-drive")

    def to_alert(self, now: float) -> Event:
        if self.drive is None:
            return Event("usb", "usb:schedule", Status.WARN, self.summary, details=self.detail,
                         remedy="plug the steward drive in; steward backup create --usb",
                         since=now)
        return Event("usb", f"usb:{self.drive.device}", Status.WARN, self.summary,
                     details=self.detail,
                     remedy=f"steward backup create --usb --device {self.drive.device}",
                     since=now)
