"""``steward usb format``: decide whether a disk may be wiped, show what will be lost, get it
confirmed, then write GPT with a BIOS boot, an EFI system and an ext4 data partition.

Refusal policy (one message lists every reason):
- never overridable: not a whole disk (a partition, an optical/memory device), read-only,
  smaller than 1 GiB, or in use (a partition or the disk mounted anywhere, an active swap, an
  LVM/md/dm device built on it, or the kernel reports it busy). Formatting under a mounted
  filesystem would leave the kernel writing the old filesystem over the new one; unmount first.
- overridable with --force: holds the running system, not attached over USB/UAS. On a live
  machine a disk that holds the running system is also mounted, so --force alone never wipes it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from agent.errors import UsageError
from agent.fileio import Locked, flocked
from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from backup.progress import human
from usbimage.detect import DATA_LABEL, EFI_LABEL, Disk, blkid, describe, read_disk
from usbimage.inuse import live_texts, system_disks

MIN_SIZE = 2**30
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"  # GRUB's core.img for i386-pc
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_SIZE = 256 * 2**20
# (partlabel, GPT type, size or None for the rest, what it is)
LAYOUT = (("steward-bios", BIOS_BOOT, 2**20, "BIOS boot, for GRUB on BIOS machines"),
          ("steward-efi", ESP, ESP_SIZE, f'EFI system, FAT32 "{EFI_LABEL}"'),
          ("steward-data", LINUX_DATA, None, f'data, ext4 "{DATA_LABEL}" (the backups)'))
# The data partition holds few, large archives: one inode per MiB is plenty and keeps the
# inode tables small enough to write now (lazy_itable_init=0) instead of having the kernel
# zero them in the background on the first mounts, over a slow USB bus, during the first
# backup, restarting whenever the stick is pulled. No blocks reserved for root: nothing but
# root writes there, and 5 % of a large stick is a whole generation.
MKFS_EXT4 = ("mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, "-T", "largefile", "-m", "0",
             "-E", "lazy_itable_init=0,lazy_journal_init=0")
MKFS_VFAT = ("mkfs.vfat", "-F", "32", "-n", EFI_LABEL)
TOOLS = {"sfdisk": "util-linux (fdisk on Debian)", "partx": "util-linux",
         "blkid": "util-linux", "mkfs.vfat": "dosfstools", "mkfs.ext4": "e2fsprogs"}
_NOT_DISKS = ("sr", "ram", "zram")
T_SFDISK, T_PARTX, T_MKFS = 120.0, 60.0, 1800.0


class FormatError(Exception):
    """A step failed after the disk was touched."""


def whole_disk(device: str, sysfs_root: str = "/sys") -> str:
    """The kernel name of the whole disk ``device`` names, or UsageError."""
    path = os.path.realpath(device)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"{device}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{device}: not a block device")
    devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    node = os.path.join(sysfs_root, "dev", "block", devno)
    name = os.path.basename(os.path.realpath(node))
    if os.path.exists(f"{node}/partition"):
        disk = os.path.basename(os.path.dirname(os.path.realpath(node)))
        raise UsageError(f"refusing to format {device}: it is a partition; a steward drive "
                         f"takes the whole disk: give /dev/{disk} (everything on it is lost)")
    if not os.path.isdir(os.path.join(sysfs_root, "block", name)) or name.startswith(_NOT_DISKS):
        raise UsageError(f"refusing to format {device}: not a disk that can be partitioned")
    return name


def summary(disk: Disk) -> str:
    ident = " ".join(x for x in (disk.vendor, disk.model) if x) or "unknown model"
    serial = f", serial {disk.serial}" if disk.serial else ""
    return (f"{disk.path} ({ident}{serial}, {human(disk.size)}, transport {disk.transport}"
            f"{', removable' if disk.removable else ''})")


def refusals(disk: Disk, force: bool) -> list[str]:
    """Why ``disk`` must not be formatted; [] when it may."""
    out = []
    if disk.read_only:
        out.append("it is read-only (a write-protect switch?)")
    if disk.size < MIN_SIZE:
        out.append(f"it is too small ({human(disk.size)}); a steward drive needs at least "
                   f"{human(MIN_SIZE)}")
    out += [f"it is in use: {r}" for r in disk.in_use]
    if disk.in_use:
        out.append("unmount it first (umount, swapoff, vgchange -an, mdadm --stop); --force "
                   "does not override this")
    if disk.system and not force:
        out.append("it holds the running system (/, /boot, /usr, /var, /home or an active "
                   "swap lives on it); --force overrides")
    if not disk.usb and not force:
        out.append(f"it is not a USB disk (transport: {disk.transport}); --force overrides")
    return out


def plan(disk: Disk) -> str:
    """What will be destroyed, and what will be written."""
    lines = [f"Disk {summary(disk)}"]
    if disk.steward:
        lines.append(f"This is a steward drive already: {disk.steward.path} "
                     f"({DATA_LABEL}) holds its backups, which will be lost.")
    if disk.partitions:
        lines.append("Everything on these partitions will be destroyed:")
        for p in disk.partitions:
            extra = "".join(f"  {k} {v}" for k, v in (("label", p.label),
                                                      ("partlabel", p.partlabel)) if v)
            lines.append(f"  {p.path:<16} {human(p.size):>10}  {p.fstype or 'no filesystem'}"
                         f"{extra}")
    elif disk.fstype:
        lines.append(f"The {disk.fstype} filesystem on the whole disk"
                     f"{f' (label {disk.label})' if disk.label else ''} will be destroyed.")
    else:
        lines.append("No partitions or filesystems were found on it; it will be wiped.")
    lines.append("New layout (GPT):")
    rest = disk.size - 2 * 2**20 - sum(size or 0 for _, _, size, _ in LAYOUT)
    for n, (name, _, size, what) in enumerate(LAYOUT, 1):
        lines.append(f"  {n}  {human(size or rest):>10}  {name:<13} {what}")
    for warning in refusals(disk, force=False):
        lines.append(f"warning: {warning.replace('; --force overrides', '')} (--force given)")
    return "\n".join(lines) + "\n"


def confirmed(disk: Disk, stdin: TextIO, out: TextIO) -> bool:
    if not stdin.isatty():
        raise UsageError(f"refusing to format {disk.path} without confirmation: standard input "
                         "is not a terminal; pass --yes to format without asking")
    out.write(f"Type the device name ({disk.name}) to destroy everything on it, "
              "anything else aborts: ")
    out.flush()
    return stdin.readline().strip() in (disk.name, disk.path)


@contextmanager
def _locked(path: str, timeout: float = 10.0) -> Iterator[None]:
    """An exclusive BSD lock on the whole disk, as systemd's block device locking convention
    asks: udevd then leaves the disk alone (no re-reading of the partition table, no probing)
    until every step is done."""
    try:
        with flocked(path, timeout, create=False):
            yield
    except Locked:
        raise FormatError(f"{path} stayed locked by another program "
                          f"for {timeout:g} s") from None


def _partition_nodes(disk: str, sysfs_root: str, timeout: float = 15.0) -> list[str]:
    """The kernel names of partitions 1..3 once they and their /dev nodes exist."""
    sys_path = os.path.realpath(os.path.join(sysfs_root, "block", disk))
    deadline = time.monotonic() + timeout
    while True:
        current = read_disk(disk, sysfs_root, sys_path).partitions
        names = {p.number: p.name for p in current}
        found = [names.get(n, "") for n in range(1, len(LAYOUT) + 1)]
        if (len(current) == len(LAYOUT) and all(found)
                and all(os.path.exists(f"/dev/{n}") for n in found)):
            return found
        if time.monotonic() > deadline:
            raise FormatError(f"the kernel shows partitions {sorted(names)} of /dev/{disk}, "
                              f"not 1-{len(LAYOUT)}")
        time.sleep(0.1)


def sfdisk_script() -> str:
    lines = ["label: gpt"]
    for name, gpt_type, size, _ in LAYOUT:
        lines.append(", ".join([*([f"size={size // 2**10}KiB"] if size else []),
                                f"type={gpt_type}", f'name="{name}"']))
    return "\n".join(lines) + "\n"


def write(disk: Disk, runner: CommandRunner, out: TextIO, sysfs_root: str = "/sys"
          ) -> list[str]:
    """Partition and make the filesystems; returns the partition names. Raises FormatError
    naming the step that failed (the caller says the disk is half-done)."""
    tool = {t: which(t) or t for t in TOOLS}

    def step(what: str, argv: list[str], timeout: float, script: str | None = None) -> None:
        out.write(f"{what}\n")
        out.flush()
        try:
            runner.run(argv, input=script, timeout=timeout)
        except CommandError as e:
            raise FormatError(f"could not {what}: {e}") from None

    with _locked(disk.path):
        step("write the partition table", [tool["sfdisk"], "--wipe", "always",
             "--wipe-partitions", "always", disk.path], T_SFDISK, sfdisk_script())
        # sfdisk asks the kernel to re-read the table (BLKRRPART); that fails on a loop device
        # without partscan, and partx -u adds, resizes and removes partitions either way.
        step("tell the kernel the new partitions", [tool["partx"], "-u", disk.path], T_PARTX)
        parts = _partition_nodes(disk.name, sysfs_root)
        step(f"make the FAT32 filesystem on /dev/{parts[1]}",
             [tool["mkfs.vfat"], *MKFS_VFAT[1:], f"/dev/{parts[1]}"], T_MKFS)
        step(f"make the ext4 filesystem on /dev/{parts[2]} (minutes on a slow stick)",
             [tool["mkfs.ext4"], *MKFS_EXT4[1:], f"/dev/{parts[2]}"], T_MKFS)
        for part, fstype, label in ((parts[1], "vfat", EFI_LABEL), (parts[2], "ext4", DATA_LABEL)):
            try:
                found = blkid(runner, f"/dev/{part}")
            except CommandError as e:
                raise FormatError(f"could not read /dev/{part} back: {e}") from None
            if (found.get("TYPE"), found.get("LABEL")) != (fstype, label):
                raise FormatError(f"/dev/{part} reads back as {found.get('TYPE')} "
                                  f"{found.get('LABEL')!r}, not {fstype} {label!r}")
    # let udev create /dev/disk/by-label/... before we return (absent without udevd)
    with contextlib.suppress(CommandError):
        runner.run(["udevadm", "settle", "--timeout=30"], timeout=40, ok_codes=range(256))
    return parts


def format_command(device: str, *, yes: bool, force: bool, runner: CommandRunner,
                   stdin: TextIO, out: TextIO, err: TextIO,
                   system_mountinfo: str | None = None, sysfs_root: str = "/sys") -> int:
    """The whole command: 0 formatted, 1 aborted at the prompt or failed while writing;
    UsageError (exit 2) when refused. ``system_mountinfo`` replaces /proc/self/mountinfo for
    the holds-the-running-system check only (tests); being in use is always read live."""
    missing = [f"{t} ({pkg})" for t, pkg in TOOLS.items() if which(t) is None]
    if missing:
        raise UsageError(f"cannot format: not installed: {', '.join(missing)}")
    name = whole_disk(device, sysfs_root)
    mountinfo, swaps = live_texts()
    system = system_disks(mountinfo if system_mountinfo is None else system_mountinfo, swaps,
                          sysfs_root)

    def look() -> Disk:
        now_mountinfo, now_swaps = live_texts()
        return describe(name, runner=runner, mountinfo_text=now_mountinfo,
                        swaps_text=now_swaps, system=system, sysfs_root=sysfs_root,
                        check_open=True)

    disk = look()
    reasons = refusals(disk, force)
    if reasons:
        raise UsageError(f"refusing to format {summary(disk)}:\n"
                         + "\n".join(f"  - {r}" for r in reasons))
    out.write(plan(disk))
    if not yes:
        if not confirmed(disk, stdin, out):
            out.write(f"aborted: nothing was written to {disk.path}\n")
            return 1
        again = look()  # the prompt may have waited long: is it still the same, idle disk?
        if (again.size, again.serial, again.partitions) != (disk.size, disk.serial,
                                                            disk.partitions):
            raise UsageError(f"{disk.path} changed while waiting for the answer; nothing was "
                             "written")
        if refusals(again, force):
            raise UsageError(f"refusing to format {disk.path}: "
                             + "; ".join(refusals(again, force)))
    try:
        parts = write(disk, runner, out, sysfs_root)
    except (FormatError, OSError, KeyboardInterrupt) as e:
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {e}"
        err.write(f"steward: formatting {disk.path} {why}\nThe disk is only partly written and "
                  f"is not a steward drive: format it again (steward usb format {disk.path}).\n")
        if isinstance(e, KeyboardInterrupt):
            raise
        return 1
    out.write(f"{disk.path} is a steward drive now: /dev/{parts[0]} BIOS boot, /dev/{parts[1]} "
              f"EFI ({EFI_LABEL}), /dev/{parts[2]} data ({DATA_LABEL})\n")
    return 0
