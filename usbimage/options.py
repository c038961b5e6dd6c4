"""``[usb]``: what the daemon does when a steward drive (ext4 label STEWARD-DATA) is plugged
in, and where steward mounts it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from agent.calendar import SCHEDULE
from agent.config.schema import BOOLEAN, choice, option
from agent.config.sections import PATH

ON_INSERT = ("backup", "notify", "ignore")


@dataclass(frozen=True)
class UsbOptions:
    """``[usb]``: the USB backup and rescue drive."""

    TABLE: ClassVar[str] = "usb"

    on_insert: str = option("notify", choice(*ON_INSERT),
                            "when a steward drive is plugged in under steward run: back up to "
                            "it (steward backup create --usb, as its own systemd unit), mail "
                            "that it is there, or only log it")
    schedule: str | None = option(None, SCHEDULE,
                                  "back up to the drive at these times under steward run (the "
                                  "[patch] schedule grammar, e.g. \"daily 01:30\", "
                                  "\"Sat 02:00\"); a drive not plugged in then is an alert")
    rescue: bool = option(True, BOOLEAN,
                          "keep a bootable rescue system on the drive: rebuilt after a "
                          "whole-system backup when the kernel or steward changed, with a boot "
                          "menu of every generation")
    mount_dir: str = option("/run/steward/usb", PATH,
                            "steward mounts the drive at DIR/<filesystem uuid> while it works "
                            "on it, and unmounts it afterwards")
