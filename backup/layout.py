"""Capture the storage and boot layout, stored with each backup for a bare-metal restore.

Sections are independent: a missing tool or failing command leaves ``{"error": "..."}`` in place
of that section (or value). Files are read under ``root``; commands inspect the running system.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shlex
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from agent.system.clock import Clock
from agent.system.commands import CommandError, CommandNotFound, CommandRunner, Completed

log = logging.getLogger(__name__)

FORMAT = 1
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")
_NO_TABLE = "does not contain a recognized partition table"
_EPHEMERAL = re.compile(r"(z?ram)\d+$")
_OCTAL = re.compile(r"\\([0-7]{3})")
_VG_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
_FINDMNT_COLS = "TARGET,SOURCE,FSTYPE,OPTIONS,UUID,LABEL,PARTUUID,SIZE"
_FS_KEYS = ("target", "source", "fstype", "options", "uuid", "label", "partuuid", "size")
_LVM_FIELDS = {
    "pvs": "pv_name,vg_name,pv_fmt,pv_attr,pv_size,pv_free,pv_uuid,dev_size,pe_start",
    "vgs": "vg_name,vg_uuid,vg_attr,vg_size,vg_free,vg_extent_size,vg_extent_count,"
           "vg_free_count,pv_count,lv_count,snap_count,vg_tags",
    "lvs": "lv_name,vg_name,lv_uuid,lv_path,lv_attr,lv_size,lv_layout,lv_role,origin,pool_lv,"
           "lv_tags",
}
_LVM_INT = re.compile(r"(_size|_free|_count|pe_start)$")  # numeric report fields
_ERRORS = (CommandError, OSError, ValueError, LookupError, TypeError)


class ToolMissing(Exception):
    """The program needed for a section is not installed."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        super().__init__(f"{tool}: not installed")


def which(tool: str) -> str | None:
    """``tool``'s path, searching $PATH plus the sbin directories a non-root $PATH lacks."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in _SBIN if d not in dirs]
    return shutil.which(tool, path=os.pathsep.join(dirs))


def _run(runner: CommandRunner, tool: str, args: Iterable[str], timeout: float,
         ok_codes: tuple[int, ...] = (0,)) -> Completed:
    exe = which(tool)
    if exe is None:
        raise ToolMissing(tool)
    try:
        return runner.run([exe, *args], timeout=timeout, ok_codes=ok_codes)
    except CommandNotFound:
        raise ToolMissing(tool) from None


def _stdout(runner: CommandRunner, tool: str, args: list[str], timeout: float) -> str:
    return _run(runner, tool, args, timeout).stdout


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, (ToolMissing, CommandError)):
        return str(exc)
    if isinstance(exc, ValueError):
        return f"unparseable output: {exc}"
    return f"unexpected output: {type(exc).__name__}: {exc}"


def _guard(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or ``{"error": ...}`` if a tool is missing or a command/read fails."""
    try:
        return fn(*args)
    except (ToolMissing, *_ERRORS) as e:
        log.debug("layout: %s failed: %s", getattr(fn, "__name__", fn), e)
        return {"error": describe(e)}


def _path(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(root: str, path: str) -> str:
    with open(_path(root, path), encoding="utf-8", errors="replace") as f:
        return f.read()


def _unescape(s: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) used in fstab and /proc files."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), s)


def _walk(devices: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for dev in devices:
        yield dev
        yield from _walk(dev.get("children") or [])


def parse_fstab(text: str) -> list[dict[str, Any]]:
    """fstab(5) lines as dicts; comments, blank lines and malformed lines are skipped."""
    entries: list[dict[str, Any]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        try:
            if not 3 <= len(fields) <= 6:
                raise ValueError(f"{len(fields)} fields")
            freq = int(fields[4]) if len(fields) > 4 else 0
            passno = int(fields[5]) if len(fields) > 5 else 0
        except ValueError as e:
            log.warning("fstab line %d ignored (%s): %r", n, e, raw)
            continue
        entries.append({
            "spec": _unescape(fields[0]), "file": _unescape(fields[1]), "vfstype": fields[2],
            "mntops": fields[3] if len(fields) > 3 else "defaults",
            "freq": freq, "passno": passno,
        })
    return entries


def parse_swaps(text: str) -> list[dict[str, Any]]:
    """/proc/swaps rows (header and malformed lines skipped); sizes there are in KiB."""
    swaps: list[dict[str, Any]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] == "Filename":
            continue
        try:
            size, prio = int(fields[2]) * 1024, int(fields[4])
        except (IndexError, ValueError):
            log.warning("/proc/swaps line ignored: %r", line)
            continue
        swaps.append({"path": _unescape(fields[0]), "type": fields[1], "size_bytes": size,
                      "priority": prio})
    return swaps


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5) ``KEY=value`` lines, shell quoting removed."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        try:
            out[key] = " ".join(shlex.split(value, comments=False))
        except ValueError:
            out[key] = value
    return out


def partition_table(runner: CommandRunner, device: str, timeout: float) -> dict[str, Any] | None:
    """``sfdisk --json DEVICE``'s "partitiontable", or None if the device has no table."""
    try:
        cp = _run(runner, "sfdisk", ["--json", device], timeout)
    except CommandError as e:
        if _NO_TABLE in e.stderr_tail:
            return None
        raise
    return dict(json.loads(cp.stdout)["partitiontable"])


def _block_devices(runner: CommandRunner, timeout: float) -> list[dict[str, Any]]:
    cp = _run(runner, "lsblk", ["--json", "--bytes", "--output-all"], timeout)
    return list(json.loads(cp.stdout)["blockdevices"])


def _disks(runner: CommandRunner, timeout: float,
           devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Disks, plus loop/ram/zram devices that carry a partition table."""
    disks: list[dict[str, Any]] = []
    for dev in _walk(devices):
        kind, name = dev.get("type"), dev.get("name") or dev.get("kname")
        if kind not in ("disk", "loop") or not name or not dev.get("size"):
            continue
        path = dev.get("path") or f"/dev/{name}"
        ephemeral = kind == "loop" or bool(_EPHEMERAL.match(str(name)))
        entry: dict[str, Any] = {"name": path, "type": kind, "size": dev.get("size"),
                                 "model": dev.get("model"), "serial": dev.get("serial"),
                                 "partition_table": None}
        try:
            entry["partition_table"] = partition_table(runner, path, timeout)
        except (ToolMissing, *_ERRORS) as e:
            entry["error"] = describe(e)
        if ephemeral and entry["partition_table"] is None:
            continue
        table = entry["partition_table"]
        for part in (table or {}).get("partitions", []):
            part["fs"] = probe(runner, str(part.get("node")), timeout)
        if table is None:
            entry["fs"] = probe(runner, path, timeout)
        disks.append(entry)
    return disks


def probe(runner: CommandRunner, device: str, timeout: float) -> dict[str, str]:
    """What ``blkid -p`` reads on ``device`` (TYPE, UUID, LABEL, VERSION, ...): the superblock
    itself, so it works without udev (a rescue boot) and records what restore recreates.
    {} when nothing is there or it cannot be read."""
    try:
        cp = _run(runner, "blkid", ["-p", "-o", "export", device], timeout, ok_codes=(0, 2))
    except (ToolMissing, CommandError):
        return {}
    return dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)


def _filesystems(runner: CommandRunner, timeout: float) -> list[dict[str, Any]]:
    args = ["--json", "--bytes", "--output", _FINDMNT_COLS]
    real = True
    try:
        cp = _run(runner, "findmnt", ["--real", *args], timeout)
    except CommandError as e:  # util-linux < 2.38 has no --real: filter by source instead
        if "real" not in e.stderr_tail:
            raise
        cp, real = _run(runner, "findmnt", args, timeout), False
    found: list[dict[str, Any]] = []
    for fs in _walk(json.loads(cp.stdout)["filesystems"]):
        src = str(fs.get("source") or "")
        if real or src.startswith("/") or ":" in src:
            found.append({k: fs.get(k) for k in _FS_KEYS})
    return found


def _lvm_report(runner: CommandRunner, cmd: str, timeout: float,
                *names: str) -> list[dict[str, Any]]:
    args = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", _LVM_FIELDS[cmd]]
    cp = _run(runner, cmd, [*args, *names], timeout)
    rows: list[dict[str, Any]] = []
    for report in json.loads(cp.stdout).get("report", []):
        for row in report.get(cmd[:2], []):
            rows.append({k: (int(v) if _LVM_INT.search(k) and str(v).isdigit() else v)
                         for k, v in row.items()})
    return rows


def _lvm(runner: CommandRunner, timeout: float) -> dict[str, Any]:
    if which("lvm") is None and which("pvs") is None:
        return {"error": "lvm2 not installed"}
    found = {cmd: _guard(_lvm_report, runner, cmd, timeout) for cmd in ("pvs", "vgs", "lvs")}
    for lv in found["lvs"] if isinstance(found["lvs"], list) else []:
        if lv.get("lv_path"):
            lv["fs"] = probe(runner, str(lv["lv_path"]), timeout)
    return found


def lvm_vg_free(runner: CommandRunner | None, vg: str, timeout: float = 30.0) -> int | None:
    """Free bytes in volume group ``vg``; None if LVM, the VG or its free space is unknown."""
    if not _VG_NAME.fullmatch(vg):
        return None
    try:
        rows = _lvm_report(runner or CommandRunner(), "vgs", timeout, vg)
    except (ToolMissing, *_ERRORS) as e:
        log.debug("vg_free %s: %s", vg, e)
        return None
    for row in rows:
        if row.get("vg_name") == vg and isinstance(row.get("vg_free"), int):
            return int(row["vg_free"])
    return None


def _md(runner: CommandRunner, timeout: float, root: str) -> dict[str, Any]:
    mdstat = _read(root, "/proc/mdstat") if os.path.exists(_path(root, "/proc/mdstat")) else None
    scan = _guard(_stdout, runner, "mdadm", ["--detail", "--scan"], timeout)
    return {"mdstat": mdstat, "scan": scan.splitlines() if isinstance(scan, str) else scan}


def _swap(runner: CommandRunner, timeout: float, root: str) -> list[dict[str, Any]]:
    if not os.path.exists(_path(root, "/proc/swaps")):
        return []
    swaps = parse_swaps(_read(root, "/proc/swaps"))
    for swap in swaps:
        swap["uuid"] = swap["label"] = None
        try:  # exit 2: nothing found on the device
            cp = _run(runner, "blkid", ["-o", "export", swap["path"]], timeout, ok_codes=(0, 2))
        except (ToolMissing, CommandError) as e:
            swap["error"] = describe(e)
            continue
        info = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
        swap["uuid"], swap["label"] = info.get("UUID"), info.get("LABEL")
    return swaps


def _bootloader(runner: CommandRunner, timeout: float, root: str,
                boot_mode: str) -> dict[str, Any]:
    cfgs = [_path(root, "/boot/grub2/grub.cfg"), _path(root, "/boot/grub/grub.cfg")]
    cfgs += sorted(glob.glob(_path(glob.escape(root), "/boot/efi/EFI/*/grub.cfg")))
    efi = _path(root, "/boot/efi/EFI")
    efibootmgr = _guard(_stdout, runner, "efibootmgr", ["-v"], timeout) if boot_mode == "uefi" \
        else None
    grubenv = [p for p in ("/boot/grub2/grubenv", "/boot/grub/grubenv")
               if os.path.isfile(_path(root, p))]
    return {
        "grub_cfg": ["/" + os.path.relpath(p, root) for p in cfgs if os.path.isfile(p)],
        "efi_dirs": _guard(lambda: sorted(os.listdir(efi))) if os.path.isdir(efi) else None,
        "efibootmgr": efibootmgr,
        "kernels": sorted(os.path.basename(p)
                          for p in glob.glob(_path(glob.escape(root), "/boot/vmlinuz-*"))),
        "grubenv": grubenv[0] if grubenv else None,
    }


def capture(runner: CommandRunner | None = None, timeout: float = 30.0,
            root: str = "/", clock: Clock | None = None) -> dict[str, Any]:
    """The storage and boot layout of this machine, dated by ``clock``; never raises for a
    missing tool."""
    run = runner or CommandRunner()
    boot_mode = "uefi" if os.path.isdir(_path(root, "/sys/firmware/efi")) else "bios"
    os_release = "/etc/os-release"
    if not os.path.exists(_path(root, os_release)):
        os_release = "/usr/lib/os-release"
    block = _guard(_block_devices, run, timeout)
    if isinstance(block, list):
        disks = _guard(_disks, run, timeout, block)
    else:
        disks = {"error": f"no block device list: {block['error']}"}
    return {
        "format": FORMAT,
        "captured": datetime.fromtimestamp((clock or Clock()).now(), timezone.utc).isoformat(
            timespec="seconds"),
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "os_release": _guard(lambda: parse_os_release(_read(root, os_release))),
        "cmdline": _guard(lambda: _read(root, "/proc/cmdline").strip()),
        "boot_mode": boot_mode,
        "block_devices": block,
        "disks": disks,
        "filesystems": _guard(_filesystems, run, timeout),
        "fstab": _guard(lambda: parse_fstab(_read(root, "/etc/fstab"))),
        "lvm": _lvm(run, timeout),
        "md": _guard(_md, run, timeout, root),
        "swap": _guard(_swap, run, timeout, root),
        "bootloader": _guard(_bootloader, run, timeout, root, boot_mode),
    }
