"""Find the disks a steward USB drive can be made of: transport, identity, partitions, and
whether a disk is in use or holds the running system.

Everything that decides is read from sysfs and /proc (pyudev only enumerates), so it works
without udevd, in a rescue boot, and over a fake sysfs tree in tests. Filesystem labels come
from lsblk (udev's database) and, where that has nothing, from ``blkid -p`` (probes the disk).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from usbimage.inuse import live_texts, stack, system_disks, usage
from usbimage.inuse import read_attr as _read

DATA_LABEL = "STEWARD-DATA"  # ext4 label of the data partition: what makes a steward drive
EFI_LABEL = "STEWARD-EFI"  # FAT label (at most 11 characters)
USB_TRANSPORTS = frozenset({"usb", "uas"})
# Not disks one formats; listed only with --all. sr (optical) keeps its real transport.
_VIRTUAL = re.compile(r"(loop|ram|zram|dm-|md|nbd)\d")
_SKIPPED = re.compile(r"(loop|ram|zram|dm-|md|nbd|sr)\d")
_BUSES = (("nvme", re.compile(r"nvme(\d+|-subsystem)?$")), ("virtio", re.compile(r"virtio\d+$")),
          ("ata", re.compile(r"ata\d+$")), ("mmc", re.compile(r"mmc\d+$")),
          ("iscsi", re.compile(r"session\d+$")), ("scsi", re.compile(r"host\d+$")))
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Partition:
    name: str
    path: str
    number: int
    size: int  # bytes
    fstype: str | None = None
    label: str | None = None
    partlabel: str | None = None
    uuid: str | None = None
    mountpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Disk:
    name: str  # kernel name: sdb, nvme0n1, loop3
    path: str  # /dev/sdb
    size: int  # bytes
    removable: bool
    read_only: bool
    transport: str  # usb, uas, nvme, virtio, ata, mmc, scsi, loop, ... or unknown
    vendor: str
    model: str
    serial: str
    partitions: tuple[Partition, ...] = ()
    fstype: str | None = None  # a filesystem (or iso9660 image) on the whole disk
    label: str | None = None
    in_use: tuple[str, ...] = ()  # why it is busy: "/dev/sdb1 is mounted on /mnt", ...
    system: bool = False  # holds /, /boot, /usr, /var, ... or an active swap
    holders: tuple[str, ...] = ()  # dm/md devices built on it

    @property
    def usb(self) -> bool:
        return self.transport in USB_TRANSPORTS

    @property
    def steward(self) -> Partition | None:
        """The data partition if this is already a steward drive."""
        return next((p for p in self.partitions if p.label == DATA_LABEL), None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(usb=self.usb, candidate=self.usb and not self.system,
                 steward=self.steward is not None)
        return d


def _ancestors(path: str, stop: str) -> Iterator[str]:
    """``path`` and its parents, up to (not including) ``stop`` or the root."""
    while path.startswith(stop + "/"):
        yield path
        path = os.path.dirname(path)


def _is_uas(sys_path: str, devices: str) -> bool:
    """Whether the SCSI host above the disk is driven by uas (USB Attached SCSI)."""
    for d in _ancestors(sys_path, devices):
        base = os.path.basename(d)
        if re.fullmatch(r"host\d+", base) and _read(f"{d}/scsi_host/{base}/proc_name") == "uas":
            return True
        if os.path.exists(f"{d}/bInterfaceNumber") and os.path.islink(f"{d}/driver"):
            return os.path.basename(os.readlink(f"{d}/driver")) == "uas"
    return False


def transport(sys_path: str, name: str, sysfs_root: str = "/sys") -> str:
    """How the disk at ``sys_path`` (its real sysfs directory) is attached."""
    devices = os.path.join(sysfs_root, "devices")
    parts = sys_path[len(devices):].split("/")
    if "virtual" in parts[:2]:
        m = _VIRTUAL.match(name)
        return m.group(1).rstrip("-") if m else "virtual"
    if any(re.fullmatch(r"usb\d+", p) for p in parts):
        return "uas" if _is_uas(sys_path, devices) else "usb"
    for bus, pattern in _BUSES[:-1]:
        if any(pattern.match(p) for p in parts):
            return bus
    tran = _read(f"{sys_path}/device/transport")
    if tran:
        return tran
    return "scsi" if any(_BUSES[-1][1].match(p) for p in parts) else "unknown"


def _vpd_serial(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[4:4 + data[3]].decode("ascii", "replace").strip() if len(data) > 4 else ""


def _identity(sys_path: str, sysfs_root: str) -> tuple[str, str, str]:
    """(vendor, model, serial): the SCSI/NVMe/virtio attributes, the USB device's where those
    are missing; the serial of a USB disk is the USB device's (what is printed on the box)."""
    dev = f"{sys_path}/device"
    vendor, model = _read(f"{dev}/vendor"), _read(f"{dev}/model")
    serial = ""
    for d in _ancestors(sys_path, os.path.join(sysfs_root, "devices")):
        if os.path.exists(f"{d}/idVendor"):  # the USB device (not an interface)
            serial = _read(f"{d}/serial")
            vendor = vendor or _read(f"{d}/manufacturer")
            model = model or _read(f"{d}/product")
            break
    serial = (serial or _read(f"{sys_path}/serial") or _read(f"{dev}/serial")
              or _vpd_serial(f"{dev}/vpd_pg80"))
    return vendor, model, serial


def _sectors(path: str) -> int:
    try:
        return int(_read(path)) * 512  # sysfs sizes are in 512-byte units on every disk
    except ValueError:
        return 0


def read_disk(name: str, sysfs_root: str = "/sys", sys_path: str | None = None) -> Disk:
    """What sysfs says of disk ``name``: no probing, no usage (see ``describe``)."""
    sys_path = sys_path or os.path.realpath(os.path.join(sysfs_root, "block", name))
    vendor, model, serial = _identity(sys_path, sysfs_root)
    parts = []
    for entry in sorted(os.listdir(sys_path)):
        number = _read(f"{sys_path}/{entry}/partition")
        if number.isdigit():
            parts.append(Partition(entry, f"/dev/{entry}", int(number),
                                   _sectors(f"{sys_path}/{entry}/size")))
    parts.sort(key=lambda p: p.number)
    return Disk(name=name, path=f"/dev/{name}", size=_sectors(f"{sys_path}/size"),
                removable=_read(f"{sys_path}/removable") == "1",
                read_only=_read(f"{sys_path}/ro") == "1",
                transport=transport(sys_path, name, sysfs_root), vendor=vendor, model=model,
                serial=serial, partitions=tuple(parts))


def disk_names(sysfs_root: str = "/sys") -> list[tuple[str, str]]:
    """(name, real sysfs path) of every whole disk: pyudev's enumeration on the live system,
    a listing of ``sysfs_root``/block otherwise (or when pyudev is missing)."""
    if sysfs_root == "/sys":
        try:
            import pyudev  # type: ignore[import-untyped]

            found = [(str(d.sys_name), str(d.sys_path)) for d in
                     pyudev.Context().list_devices(subsystem="block", DEVTYPE="disk")]
            return sorted(found)
        except (ImportError, OSError):
            pass
    block = os.path.join(sysfs_root, "block")
    return [(n, os.path.realpath(os.path.join(block, n))) for n in sorted(os.listdir(block))]


def _lsblk(runner: CommandRunner, path: str) -> dict[str, dict[str, Any]]:
    cp = runner.run([which("lsblk") or "lsblk", "--json", "--bytes", "-o",
                     "NAME,PATH,SIZE,TYPE,FSTYPE,LABEL,PARTLABEL,UUID,MOUNTPOINTS", path],
                    timeout=PROBE_TIMEOUT)

    def walk(devs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for d in devs:
            yield d
            yield from walk(d.get("children") or [])

    return {str(d["name"]): d for d in walk(json.loads(cp.stdout).get("blockdevices", []))}


def blkid(runner: CommandRunner, path: str) -> dict[str, str]:
    """``blkid -p`` (a low-level probe of the device itself, not udev's cache) as a dict;
    {} when nothing is found on it."""
    cp = runner.run([which("blkid") or "blkid", "-p", "-o", "export", path], timeout=PROBE_TIMEOUT,
                    ok_codes=(0, 2))
    out = {}
    for line in cp.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            try:
                out[key] = " ".join(shlex.split(value))
            except ValueError:
                out[key] = value
    return out


_FIELDS = ("fstype", "label", "partlabel", "uuid")
_BLKID = {"fstype": "TYPE", "label": "LABEL", "partlabel": "PART_ENTRY_NAME", "uuid": "UUID"}


def _filesystem(name: str, listed: dict[str, dict[str, Any]], runner: CommandRunner
                ) -> dict[str, str | None]:
    row = listed.get(name, {})
    found = {k: row.get(k) or None for k in _FIELDS}
    if not any(found.values()) and os.access(f"/dev/{name}", os.R_OK):
        # udev's database has nothing (no udevd, or not yet probed): probe the device
        try:
            probed = blkid(runner, f"/dev/{name}")
        except CommandError:
            return found
        found = {k: probed.get(v) or None for k, v in _BLKID.items()}
    return found


def probe(disk: Disk, runner: CommandRunner) -> Disk:
    """``disk`` with the filesystem type, label, partition name and UUID of each partition."""
    try:
        listed = _lsblk(runner, disk.path)
    except (CommandError, ValueError):
        listed = {}
    parts = []
    for p in disk.partitions:
        fs = _filesystem(p.name, listed, runner)
        mounts = listed.get(p.name, {}).get("mountpoints") or []
        parts.append(replace(p, fstype=fs["fstype"], label=fs["label"],
                             partlabel=fs["partlabel"], uuid=fs["uuid"],
                             mountpoints=tuple(str(m) for m in mounts if m)))
    whole = _filesystem(disk.name, listed, runner)
    return replace(disk, partitions=tuple(parts), fstype=whole["fstype"], label=whole["label"])


def describe(name: str, *, runner: CommandRunner | None = None, mountinfo_text: str = "",
             swaps_text: str = "", system: set[str] | None = None, sysfs_root: str = "/sys",
             sys_path: str | None = None, check_open: bool = False) -> Disk:
    """Everything about disk ``name``: sysfs, filesystems (when ``runner`` is given), usage
    from the given /proc texts (and, with ``check_open``, from a momentary exclusive open:
    only right before formatting, since it would make a mount at that moment fail), and
    whether it is among the ``system`` disks."""
    disk = read_disk(name, sysfs_root, sys_path)
    if runner is not None:
        disk = probe(disk, runner)
    own = {name, *(p.name for p in disk.partitions)}
    holders = tuple(m for m in stack(name, sysfs_root) if m not in own)
    reasons = usage(name, mountinfo_text, swaps_text, sysfs_root, check_open=check_open)
    return replace(disk, in_use=tuple(reasons), holders=holders,
                   system=name in (system if system is not None else
                                   system_disks(mountinfo_text, swaps_text, sysfs_root)))


def list_disks(*, all_disks: bool = False, runner: CommandRunner | None = None,
               sysfs_root: str = "/sys", mountinfo_text: str | None = None,
               swaps_text: str | None = None) -> list[Disk]:
    """The USB/UAS disks (with ``all_disks``: every disk, loop devices included); disks
    without a medium (size 0: an empty card reader, an unattached loop device) are left out."""
    live = live_texts() if mountinfo_text is None or swaps_text is None else ("", "")
    mountinfo = live[0] if mountinfo_text is None else mountinfo_text
    swaps = live[1] if swaps_text is None else swaps_text
    system = system_disks(mountinfo, swaps, sysfs_root)
    out = []
    for name, sys_path in disk_names(sysfs_root):
        if not all_disks and _SKIPPED.match(name):
            continue
        try:
            disk = read_disk(name, sysfs_root, sys_path)
            if disk.size == 0 or not (all_disks or disk.usb):
                continue
            out.append(describe(name, runner=runner, mountinfo_text=mountinfo,
                                swaps_text=swaps, system=system, sysfs_root=sysfs_root,
                                sys_path=sys_path))
        except FileNotFoundError:  # unplugged while we looked
            continue
    return out
