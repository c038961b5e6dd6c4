"""The hotplug monitor on real kernel uevents: partitions of a formatted loop disk added with
``partx -a`` announce themselves over netlink (no udevd here); the monitor must pick the
STEWARD-DATA one, leave the ESP and the BIOS boot partition alone, decide once per device, and
for on_insert = "backup" start a transient unit (systemd-run is a recorder script here, systemd
not being PID 1) whose command, run for real, backs up to the drive."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.events import Event
from agent.model import Status
from agent.system.commands import CommandRunner
from tests.conftest import QUIET, REPO, start_daemon
from tests.usb.conftest import root_loop, sh, usb
from tests.usb.test_drive import config, generations, make_drive, source_tree
from usbimage.drive import mounted_at
from usbimage.monitor import DriveEvent, DriveMonitor
from usbimage.options import UsbOptions

pytestmark = root_loop


def until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport json, sys\n{body}\n")
    path.chmod(0o755)
    return str(path)


def recorder(tmp_path: Path) -> tuple[str, Path]:
    """A systemd-run that appends its argv (JSON, one line per call) to a file."""
    record = tmp_path / "systemd-run.jsonl"
    return script(tmp_path / "systemd-run", f"open({str(record)!r}, 'a').write("
                  "json.dumps(sys.argv[1:]) + '\\n')"), record


def systemctl(tmp_path: Path, listed: str = "") -> str:
    """A systemctl whose list-units prints ``listed``."""
    return script(tmp_path / "systemctl", f"sys.stdout.write({listed!r})")


def wait_for_alert(mon: DriveMonitor, part: str, timeout: float = 20.0) -> list[Event]:
    """The monitor's alerts about ``part`` (others may come from other loop devices)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [a for a in mon.alerts(time.time()) if a.check == f"usb:{part}"]
        if mine:
            return mine
        time.sleep(0.1)
    raise AssertionError(f"no alert for {part} within {timeout} s")


def wait_for_event(mon: DriveMonitor, part: str, timeout: float = 20.0) -> DriveEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [e for e in mon.events() if e.drive.device == part]
        if mine:
            [event] = mine
            return event
        time.sleep(0.1)
    raise AssertionError(f"no event for {part} within {timeout} s")


def test_kernel_uevents_make_the_data_partition_a_drive_once_and_not_the_esp(
        loop_disk, caplog):
    caplog.set_level(logging.DEBUG, logger="usbimage")
    disk, part = make_drive(loop_disk)
    sh("partx", "-d", disk)  # partitions gone; partx -a brings them back with "add" events
    woken = threading.Event()
    mon = DriveMonitor(UsbOptions(), CommandRunner(), ["steward"], wake=woken.set)
    mon.start()
    try:
        assert mon.error == ""
        sh("partx", "-a", disk)
        [alert] = wait_for_alert(mon, part)
        assert woken.is_set()
        assert (alert.kind, alert.status) == ("usb", Status.WARN)
        assert alert.summary == (f"steward drive inserted: {part} (2.0 GiB, loop); run "
                                 "steward backup create --usb")
        assert alert.remedy == f"steward backup create --usb --device {part}"
        said = caplog.text
        assert f"{disk}p2 is not a steward drive: vfat 'STEWARD-EFI'" in said
        assert f"{disk}p1 is not a steward drive: no filesystem ''" in said

        sh("partx", "-d", disk)  # out and in again within the debounce time: no second alert
        sh("partx", "-a", disk)
        deadline = time.monotonic() + 20
        while f"{part}: seen " not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"{part}: seen " in caplog.text
        assert [a for a in mon.alerts(time.time()) if a.check == f"usb:{part}"] == []
    finally:
        mon.stop()


def test_on_insert_backup_starts_a_transient_unit_whose_command_backs_up_to_the_drive(
        loop_disk, tmp_path):
    disk, part = make_drive(loop_disk)
    sh("partx", "-d", disk)
    systemd_run, record = recorder(tmp_path)
    argv = [sys.executable, "-m", "agent", "backup", "create", "--usb", "--source",
            str(source_tree(tmp_path)), "--config", str(config(tmp_path)),
            "--state-dir", str(tmp_path / "state")]
    mon = DriveMonitor(UsbOptions(on_insert="backup"), CommandRunner(), argv,
                       systemctl=[systemctl(tmp_path)], systemd_run=[systemd_run])
    mon.start()
    try:
        sh("partx", "-a", disk)
        event = wait_for_event(mon, part)
    finally:
        mon.stop()
    assert event.kind == "backup-started" and not event.alert
    assert event.unit.startswith("steward-usb-backup-") and event.unit.endswith(".service")
    [called] = [json.loads(line) for line in record.read_text().splitlines()]
    cut = called.index("--")
    assert called[:cut] == [f"--unit={event.unit.removesuffix('.service')}",
                            f"--description=steward: backup to the USB drive {part}",
                            "--property=Type=oneshot", "--property=TimeoutStartSec=720min",
                            "--collect", "--no-block"]
    assert called[cut + 1:] == [*argv, "--device", part]

    done = subprocess.run(called[cut + 1:], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert mounted_at(part) is None
    [gen] = generations(part, tmp_path)
    assert gen["verified"] is True


def test_a_busy_run_or_a_failing_systemd_run_is_an_alert_and_ignore_only_logs(
        loop_disk, tmp_path):
    disk, part = make_drive(loop_disk)
    name = os.path.basename(part)
    systemd_run, record = recorder(tmp_path)
    busy = systemctl(tmp_path, "steward-patch-20250101-020000.service loaded activating start "
                     "steward: dnf patching\n")
    runner = CommandRunner()
    mon = DriveMonitor(UsbOptions(on_insert="backup"), runner, ["steward"], systemctl=[busy],
                       systemd_run=[systemd_run])
    event = mon.handle(name)
    assert event is not None and event.kind == "backup-not-started" and event.alert
    assert event.summary.endswith("backup not started: steward-patch-20250101-020000.service "
                                  "still running")
    assert not record.exists()
    assert mon.handle(name) is None  # once within the debounce time

    idle = systemctl(tmp_path)
    failing = DriveMonitor(UsbOptions(on_insert="backup"), runner, ["steward"],
                           systemctl=[idle], systemd_run=["/bin/false"])
    event = failing.handle(name)
    assert event is not None and event.kind == "backup-not-started"
    assert event.summary.endswith("backup could not be started") and "/bin/false" in event.detail

    quiet = DriveMonitor(UsbOptions(on_insert="ignore"), runner, ["steward"])
    event = quiet.handle(name)
    assert event is not None and event.kind == "ignored" and not event.alert
    assert quiet.handle(f"{os.path.basename(disk)}p2") is None  # the ESP


def test_steward_run_alerts_when_a_steward_drive_is_plugged_in(loop_disk, tmp_path):
    """The daemon end to end ([usb] on_insert = "notify", alerts to the journal: stderr)."""
    disk, part = make_drive(loop_disk)
    sh("partx", "-d", disk)
    proc, log, _ = start_daemon(tmp_path, QUIET + '[usb]\non_insert = "notify"\n')
    try:
        until(lambda: "watching for steward drives (kernel uevents, on insert: notify)"
              in log.read_text())
        sh("partx", "-a", disk)
        until(lambda: f"usb:{part}:" in log.read_text())
        [line] = [x for x in log.read_text().splitlines() if f"usb:{part}:" in x]
        assert f"ALERT {os.uname().nodename} usb WARN usb:{part}: steward drive inserted: " \
            f"{part} (2.0 GiB, loop); run steward backup create --usb | remedy: steward " \
            f"backup create --usb --device {part}" in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_kernel_uevents_are_parsed_and_other_messages_are_not():
    from usbimage.monitor import parse_uevent

    msg = (b"add@/devices/virtual/block/loop3/loop3p3\0ACTION=add\0"
           b"DEVPATH=/devices/virtual/block/loop3/loop3p3\0SUBSYSTEM=block\0DEVNAME=loop3p3\0"
           b"DEVTYPE=partition\0PARTN=3\0PARTNAME=steward-data\0SEQNUM=5021\0")
    ev = parse_uevent(msg)
    assert (ev["ACTION"], ev["SUBSYSTEM"], ev["DEVTYPE"], ev["DEVNAME"]) == \
        ("add", "block", "partition", "loop3p3")
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe...") == {}  # udevd's format: not ours
    assert parse_uevent(b"") == {}


def test_scheduled_backup_starts_on_time_once_and_alerts_without_a_drive(
        tmp_path: Path, loop_disk: Callable[[int], str]) -> None:
    """[usb] schedule: due at 01:30 local time; before that nothing, at it the backup is
    started for the one steward drive attached, not again until the next day; with no drive
    it is an alert instead of a silent skip."""
    from datetime import datetime

    from usbimage.schedule import UsbSchedule

    started: list[tuple[str, str]] = []

    def start(drive: Any, what: str) -> DriveEvent:
        started.append((drive.device, what))
        return DriveEvent("backup-started", drive, what)

    def local(day: int, hour: int, minute: int) -> float:
        return datetime(2026, 11, day, hour, minute).astimezone().timestamp()

    sched = UsbSchedule("daily 01:30", CommandRunner(), tmp_path, start)
    assert sched.tick(local(23, 1, 0)) == []
    [event] = sched.tick(local(23, 1, 31))
    assert event.kind == "scheduled-no-drive" and event.alert
    assert event.to_alert(0).check == "usb:schedule"
    assert "no steward drive is plugged in" in event.summary and not started
    assert sched.tick(local(23, 2, 0)) == []  # once per time
    dev = loop_disk(1100)
    assert usb("format", dev, "--yes", "--force").code == 0
    again = UsbSchedule("daily 01:30", CommandRunner(), tmp_path, start)  # after a restart
    assert again.tick(local(23, 3, 0)) == []  # 01:30 today was handled before the restart
    [event] = again.tick(local(24, 1, 30))
    assert event.kind == "backup-started" and started == [
        (f"{dev}p3", "scheduled USB backup (Tue 2026-11-24 01:30)")]
