"""The steward drive in use: find the partition labelled STEWARD-DATA (``blkid -p`` on every
partition, so it works without udevd), mount it for the time of one job and unmount it after.

A drive already mounted somewhere (by the administrator, or a desktop's automounter) is used
where it is and left mounted; one steward mounts itself goes to ``[usb] mount_dir``/<uuid> with
nodev,nosuid,noexec, and is synced and unmounted on the way out, also after an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import UsageError
from agent.fileio import Locked, flocked
from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from backup.progress import human
from usbimage.detect import DATA_LABEL, blkid, read_disk
from usbimage.inuse import read_attr

log = logging.getLogger(__name__)

GENERATIONS = "generations"  # the backup target folder on the data partition
MOUNT_OPTIONS = "nodev,nosuid,noexec"
T_PROBE, T_MOUNT, T_SYNC, T_UMOUNT = 30.0, 120.0, 900.0, 120.0
UMOUNT_TRIES = 5  # "target is busy" for a moment after the last file is closed: try again
_OCTAL = re.compile(r"\\([0-7]{3})")  # mountinfo's escapes of space, tab, newline, backslash
NO_DRIVE = "no steward drive attached: steward usb list; steward usb format DEV"


class DriveError(UsageError):
    """No steward drive, several, or not the one named: exit 2, nothing was touched."""


class MountError(Exception):
    """Mounting or unmounting the drive failed; the message says what to do."""


@dataclass(frozen=True)
class Drive:
    device: str  # the data partition: /dev/sdb3
    uuid: str  # its filesystem's UUID (the mount point's name)
    fstype: str
    disk: str  # kernel name of the whole disk: sdb
    model: str  # vendor and model of the disk, "" if unknown
    size: int  # bytes, of the whole disk
    transport: str

    def describe(self) -> str:
        what = ", ".join(x for x in (self.model, human(self.size), self.transport) if x)
        return f"{self.device} ({what})"


def _partitions(sysfs_root: str) -> list[str]:
    base = os.path.join(sysfs_root, "class", "block")
    names = sorted(os.listdir(base)) if os.path.isdir(base) else []
    return [n for n in names if os.path.exists(os.path.join(base, n, "partition"))]


def probe_partition(name: str, runner: CommandRunner, sysfs_root: str = "/sys") -> Drive | None:
    """The steward drive whose data partition is ``name`` (sdb3), or None: another label, no
    filesystem, gone, or unreadable."""
    node = os.path.join(sysfs_root, "class", "block", name)
    dev = "/dev/" + name.replace("!", "/")  # cciss!c0d0p1 is /dev/cciss/c0d0p1
    if read_attr(f"{node}/size") in ("", "0", "2") or not os.path.exists(dev):
        return None  # gone, empty, or an extended partition's 1 KiB stub
    try:
        found = blkid(runner, dev)
    except CommandError as e:
        log.debug("cannot probe %s: %s", dev, e)
        return None
    if found.get("LABEL") != DATA_LABEL:
        log.debug("%s is not a steward drive: %s %r", dev, found.get("TYPE") or
                  "no filesystem", found.get("LABEL") or "")
        return None
    disk_name = os.path.basename(os.path.dirname(os.path.realpath(node)))
    try:
        disk = read_disk(disk_name, sysfs_root)
        ident = " ".join(x for x in (disk.vendor, disk.model) if x)
        size, tran = disk.size, disk.transport
    except OSError:  # unplugged while we looked
        ident, size, tran = "", 0, ""
    return Drive(dev, found.get("UUID") or name, found.get("TYPE") or "", disk_name,
                 ident, size, tran)


def find_drives(runner: CommandRunner, sysfs_root: str = "/sys") -> list[Drive]:
    """Every attached steward drive: each partition probed with ``blkid -p`` (udev's database,
    which lsblk reads, is empty without udevd and may lag behind a fresh format)."""
    return [d for d in (probe_partition(n, runner, sysfs_root) for n in _partitions(sysfs_root))
            if d is not None]


def _devno(path: str) -> tuple[int, int] | None:
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return None
    return os.major(rdev), os.minor(rdev)


def select(drives: list[Drive], device: str | None) -> Drive:
    """The drive to use: the only one, or the one ``device`` names (its data partition or its
    disk); DriveError otherwise."""
    if device is not None:
        want = _devno(device)
        if want is None:
            raise DriveError(f"--device {device}: no such device")
        for d in drives:
            if want in (_devno(d.device), _devno(f"/dev/{d.disk}")):
                return d
        listed = "; ".join(d.describe() for d in drives) or "none"
        raise DriveError(f"--device {device} is not a steward drive (no {DATA_LABEL} "
                         f"filesystem on it); steward drives attached: {listed}")
    if not drives:
        raise DriveError(NO_DRIVE)
    if len(drives) > 1:
        raise DriveError("several steward drives attached: " + "; ".join(
            d.describe() for d in drives) + "; pick one with --device DEV")
    return drives[0]


def mounted_at(device: str, mountinfo_text: str | None = None) -> tuple[str, bool] | None:
    """Where ``device``'s filesystem root is mounted, and whether read-write; None if not."""
    devno = _devno(device)
    if devno is None:
        return None
    if mountinfo_text is None:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mountinfo_text = f.read()
    for line in mountinfo_text.splitlines():
        fields = line.split(" - ")[0].split()
        if len(fields) >= 6 and fields[2] == f"{devno[0]}:{devno[1]}" and fields[3] == "/":
            target = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            return target, "rw" in fields[5].split(",")
    return None


@dataclass
class Mounted:
    drive: Drive
    path: Path
    ours: bool  # steward mounted it (and unmounts it); False: it was mounted already

    @property
    def target(self) -> Path:
        """The backup target: the generations folder on the drive (made if missing)."""
        t = self.path / GENERATIONS
        t.mkdir(mode=0o700, exist_ok=True)
        return t


def _tool(name: str) -> str:
    return which(name) or name


@contextlib.contextmanager
def _exclusive(mount_dir: str, drive: Drive) -> Iterator[None]:
    """One steward job per drive at a time: a second would unmount it under the first."""
    os.makedirs(mount_dir, mode=0o755, exist_ok=True)
    try:
        with flocked(os.path.join(mount_dir, f".{drive.uuid}.lock")):
            yield
    except Locked:
        raise MountError(f"another steward job is using {drive.device} (a backup still "
                         "running?); try again when it is done") from None


@contextlib.contextmanager
def mounted(drive: Drive, mount_dir: str, runner: CommandRunner) -> Iterator[Mounted]:
    """``drive`` mounted for the block: where it already is, or at mount_dir/<uuid> (synced
    and unmounted afterwards, also when the block raises; also when an earlier run left it
    mounted there). MountError if either fails; an unmount failure after an error in the
    block is logged and the block's error goes on."""
    with _exclusive(mount_dir, drive):
        path = Path(mount_dir) / drive.uuid
        where = mounted_at(drive.device)
        if where is not None and not where[1]:
            raise MountError(f"{drive.device} is mounted read-only at {where[0]}; remount it "
                             f"read-write (mount -o remount,rw {where[0]}) or unmount it")
        if where is not None and Path(where[0]) != path:
            log.info("%s is mounted at %s already: using it there, leaving it mounted",
                     drive.device, where[0])
            yield Mounted(drive, Path(where[0]), ours=False)
            return
        if where is None:
            _mount(drive, path, runner)
        else:
            log.warning("%s is still mounted at %s (an earlier run was killed?): using it, "
                        "unmounting it after", drive.device, path)
        failed = True
        try:
            yield Mounted(drive, path, ours=True)
            failed = False
        finally:
            try:
                unmount(path, runner)
            except MountError as e:
                if not failed:
                    raise
                log.error("%s", e)


def _mount(drive: Drive, path: Path, runner: CommandRunner) -> None:
    if drive.fstype != "ext4":
        raise MountError(f"{drive.device} holds {drive.fstype or 'no filesystem'}, not ext4: "
                         f"format the drive again (steward usb format /dev/{drive.disk})")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.ismount(path):
        raise MountError(f"{path} is a mount point already (of another device); unmount it")
    try:
        runner.run([_tool("mount"), "-t", "ext4", "-o", MOUNT_OPTIONS, drive.device, str(path)],
                   timeout=T_MOUNT)
    except CommandError as e:
        with contextlib.suppress(OSError):
            path.rmdir()
        raise MountError(f"cannot mount {drive.device}: {e}; check it with "
                         f"fsck.ext4 -f {drive.device}") from None
    log.info("mounted %s at %s", drive.device, path)


def unmount(path: Path, runner: CommandRunner) -> None:
    """Write everything out (syncfs), unmount, remove the empty mount point."""
    try:
        runner.run([_tool("sync"), "-f", str(path)], timeout=T_SYNC)
        for attempt in range(1, UMOUNT_TRIES + 1):
            try:
                runner.run([_tool("umount"), str(path)], timeout=T_UMOUNT)
                break
            except CommandError as e:
                if attempt == UMOUNT_TRIES or "busy" not in e.stderr_tail:
                    raise
                time.sleep(attempt)
    except CommandError as e:
        raise MountError(f"cannot unmount {path}: {e}; do not unplug the drive: close what "
                         f"uses it (fuser -vm {path}), then umount {path}") from None
    log.info("unmounted %s", path)
    with contextlib.suppress(OSError):
        path.rmdir()
