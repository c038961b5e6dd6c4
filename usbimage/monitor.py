"""The daemon's hotplug monitor: partitions that appear (the kernel's "add" uevents) are probed
with ``blkid -p``; a steward drive (STEWARD-DATA) runs ``[usb] on_insert``: a backup started as
its own transient systemd unit, a mail that the drive is there, or a line in the journal.

Events are read straight from the kernel's uevent netlink socket (what pyudev's "kernel" source
reads): that needs no udevd (a rescue boot, a container), the kernel has made the /dev node
(devtmpfs) before it announces the device, and it keeps pyudev (0.8 MB) out of the long-running
daemon, whose budget is 30 MB. ``steward usb list`` uses pyudev. The monitor thread hands its
findings to the supervisor through a queue and wakes it, as the D-Bus unit watcher does.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.events import Event
from agent.system.clock import Clock
from agent.system.commands import CommandError, CommandRunner
from agent.system.systemd import active_units, run_transient
from usbimage.events import DriveEvent
from usbimage.options import UsbOptions

if TYPE_CHECKING:
    from usbimage.drive import Drive
    from usbimage.schedule import UsbSchedule

log = logging.getLogger(__name__)

DEBOUNCE = 10.0  # seconds: one decision per device however many "add" events arrive
UNIT_PREFIX = "steward-usb-backup"
# Not while another backup (to the drive, or to [backup] target by steward backup start) or a
# patch run (whose pre-patch backup may be writing) is active.
BUSY_UNITS = (f"{UNIT_PREFIX}-*.service", "steward-backup-*.service",
              "steward-patch-*.service", "steward-patch.service")
BACKUP_TIMEOUT_MIN = 12 * 60  # a whole system onto a slow stick
POLL = 0.5  # how soon stop() is noticed


NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # the kernel's own broadcasts (udevd re-sends on group 2 in its own format)


def uevent_socket() -> socket.socket:
    """A socket receiving the kernel's uevents (root, or CAP_NET_ADMIN, is not needed)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # bursts of many devices
        s.bind((0, KERNEL_GROUP))
        s.settimeout(POLL)
    except OSError:
        s.close()
        raise
    return s


def parse_uevent(data: bytes) -> dict[str, str]:
    """``add@/devices/...\\0ACTION=add\\0SUBSYSTEM=block\\0DEVNAME=sdb3\\0...`` -> its
    KEY=value fields; {} for what is not a kernel uevent."""
    head, _, rest = data.partition(b"\0")
    if b"@/" not in head:
        return {}
    out = {}
    for field in rest.split(b"\0"):
        key, sep, value = field.partition(b"=")
        if sep:
            out[key.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return out


class DriveMonitor:
    """``start()`` a thread that watches for steward drives; the supervisor calls
    ``alerts(now)`` each pass to take what it found. ``options`` may be replaced on a reload;
    each insertion reads the current one. ``argv`` is the backup command without --device."""

    def __init__(self, options: UsbOptions, runner: CommandRunner, argv: Sequence[str], *,
                 wake: Callable[[], None] = lambda: None,
                 systemctl: Sequence[str] = ("systemctl",),
                 systemd_run: Sequence[str] = ("systemd-run",),
                 debounce: float = DEBOUNCE, clock: Clock | None = None,
                 sysfs_root: str = "/sys", state_dir: Path | None = None) -> None:
        self.options, self.runner, self.argv = options, runner, tuple(argv)
        self.state_dir = state_dir  # for [usb] schedule (none: not scheduled)
        self.scheduled: UsbSchedule | None = None
        self.wake = wake
        self.systemctl, self.systemd_run = tuple(systemctl), tuple(systemd_run)
        self.debounce, self.clock, self.sysfs_root = debounce, clock or Clock(), sysfs_root
        self.error = ""  # why the monitor is not running, for the log and status
        self._seen: dict[str, float] = {}
        self._queue: queue.Queue[DriveEvent] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> None:
        """Listen from now on (events before this call are not seen). Failing to listen is
        logged, not raised: supervision goes on without hotplug."""
        try:
            sock = uevent_socket()
        except OSError as e:
            self.error = f"USB hotplug monitor not running: {e.strerror or e}"
            log.error("%s", self.error)
            return
        self.error = ""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(sock,),
                                        name="usb-monitor", daemon=True)
        self._thread.start()
        log.info("watching for steward drives (kernel uevents, on insert: %s)",
                 self.options.on_insert)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self, sock: socket.socket) -> None:
        with sock:
            while not self._stop.is_set():
                try:
                    data = sock.recv(1 << 16)
                except socket.timeout:
                    continue
                except OSError as e:  # ENOBUFS after a burst: events were lost, go on
                    log.warning("USB hotplug monitor: %s", e)
                    time.sleep(POLL)
                    continue
                self._uevent(parse_uevent(data))

    def _uevent(self, ev: dict[str, str]) -> None:
        if ev.get("ACTION") != "add" or ev.get("SUBSYSTEM") != "block" \
                or ev.get("DEVTYPE") != "partition" or not ev.get("DEVNAME"):
            return
        name = ev["DEVNAME"].rsplit("/", 1)[-1]
        try:
            event = self.handle(name)
        except Exception:  # one bad device must not end the monitor
            log.exception("USB hotplug monitor: handling /dev/%s failed", name)
            return
        if event is not None:
            self._queue.put(event)
            self.wake()

    # -- decisions -------------------------------------------------------------------------
    def handle(self, name: str) -> DriveEvent | None:
        """What a partition ``name`` (sdb3) that just appeared means: None when it is not a
        steward drive or was handled less than ``debounce`` seconds ago."""
        from usbimage.drive import probe_partition  # only once a partition appears

        drive = probe_partition(name, self.runner, self.sysfs_root)
        if drive is None:
            return None
        now = self.clock.monotonic()
        last = self._seen.get(name)
        if last is not None and now - last < self.debounce:
            log.debug("%s: seen %.1f s ago, not again", drive.device, now - last)
            return None
        self._seen = {k: t for k, t in self._seen.items() if now - t < self.debounce}
        self._seen[name] = now
        action = self.options.on_insert
        what = f"steward drive inserted: {drive.describe()}"
        if action == "backup":
            return self._backup(drive, what)
        if action == "notify":
            return DriveEvent("inserted", drive, f"{what}; run steward backup create --usb")
        return DriveEvent("ignored", drive, f"{what} ([usb] on_insert = \"ignore\")")

    def _backup(self, drive: Drive, what: str) -> DriveEvent:
        started = time.localtime(self.clock.now())
        unit = f"{UNIT_PREFIX}-{time.strftime('%Y%m%d-%H%M%S', started)}"
        try:
            busy = active_units(self.runner, BUSY_UNITS, self.systemctl)
            if busy:
                return DriveEvent("backup-not-started", drive, f"{what}; backup not started: "
                                  f"{', '.join(busy)} still running",
                                  detail="steward does not back up while another backup or a "
                                  "patch run is active")
            run_transient(self.runner, unit, [*self.argv, "--device", drive.device],
                          description=f"steward: backup to the USB drive {drive.device}",
                          timeout_minutes=BACKUP_TIMEOUT_MIN, systemd_run=self.systemd_run)
        except CommandError as e:
            return DriveEvent("backup-not-started", drive,
                              f"{what}; backup could not be started", detail=str(e))
        return DriveEvent("backup-started", drive, f"{what}; backup started as {unit}.service "
                          "(it mails its report)", unit=f"{unit}.service")

    # -- the supervisor's side -------------------------------------------------------------
    def events(self) -> list[DriveEvent]:
        """What the thread found since the last call."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def _schedule(self, now: float) -> list[DriveEvent]:
        want = self.options.schedule if self.state_dir is not None else None
        if want is None:
            self.scheduled = None
            return []
        if self.scheduled is None or self.scheduled.schedule != want:
            from usbimage.schedule import UsbSchedule

            assert self.state_dir is not None
            self.scheduled = UsbSchedule(want, self.runner, self.state_dir, self._backup)
        try:
            return self.scheduled.tick(now)
        except Exception:  # a broken schedule must not stop supervision
            log.exception("USB backup schedule failed")
            return []

    def alerts(self, now: float) -> list[Event]:
        """The events since the last call (and a scheduled backup when it is due), logged;
        those to mail as alerts."""
        out = []
        for e in [*self.events(), *self._schedule(now)]:
            log.info("%s%s", e.summary, f" ({e.detail})" if e.detail else "")
            if e.alert:
                out.append(e.to_alert(now))
        return out
