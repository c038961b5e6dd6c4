"""Carry out the disk half of a restore plan: partition tables, LVM, filesystems with their
saved UUIDs and labels, and the restored tree mounted under one directory.

Runs without udevd (a rescue boot): partition nodes are waited for in /dev, LVM is told not to
wait for udev and makes its /dev nodes itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from usbimage.restoreplan import NewFs, Plan

T_SFDISK, T_MKFS, T_LVM, T_MOUNT = 120.0, 3600.0, 300.0, 120.0
# No udev in a rescue boot: LVM must neither wait for it nor expect it to make the nodes.
# LVM sees only the restored PVs: a volume group of the same name elsewhere on this machine
# (the old disk, still attached) must not get in the way, nor the host's devices file.
LVM_CONFIG = ("devices {{ obtain_device_list_from_udev = 0 use_devicesfile = 0 "
              "filter = [ {accept} \"r|.*|\" ] }} "
              "activation {{ udev_sync = 0 udev_rules = 0 verify_udev_operations = 1 }}")


def lvm_config(plan: Plan) -> str:
    accept = " ".join(f'"a|^{re.escape(d)}$|"' for d, _, _ in plan.lvm.pvs)
    return LVM_CONFIG.format(accept=accept)


class RestoreError(Exception):
    """A step failed after disks were touched; the message names it."""


def _tool(name: str) -> str:
    found = which(name)
    if found is None:
        raise RestoreError(f"{name} is not installed here; it is needed for this restore")
    return found


class Runner:
    """Steps, each said before it runs, each failure a RestoreError naming the step."""

    def __init__(self, runner: CommandRunner, say: Callable[[str], None]) -> None:
        self.runner, self.say = runner, say
        self.done: list[str] = []

    def step(self, what: str, argv: list[str], timeout: float, stdin: str | None = None,
             quiet: bool = False) -> str:
        if not quiet:
            self.say(what)
        try:
            cp = self.runner.run(argv, input=stdin, timeout=timeout)
        except CommandError as e:
            raise RestoreError(f"could not {what}: {e}") from None
        self.done.append(what)
        return cp.stdout


def _wait_nodes(paths: list[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [p for p in paths if not os.path.exists(p)]
            raise RestoreError(f"the kernel did not show {', '.join(missing)}")
        time.sleep(0.1)


def partition(plan: Plan, run: Runner) -> None:
    for t in plan.targets:
        path = t.disk.path
        run.step(f"wipe signatures on {path}", [_tool("wipefs"), "--all", "--force", path],
                 T_SFDISK)
        if not t.script:
            continue
        run.step(f"write the partition table of {path}",
                 [_tool("sfdisk"), "--wipe", "always", "--wipe-partitions", "always", path],
                 T_SFDISK, t.script)
        # sfdisk's BLKRRPART fails on a loop device; partx -u works on every disk
        run.step(f"tell the kernel about {path}'s partitions", [_tool("partx"), "-u", path],
                 T_SFDISK, quiet=True)
        _wait_nodes(list(t.parts.values()))
        for node in t.parts.values():  # old signatures inside the new partitions
            run.step(f"wipe {node}", [_tool("wipefs"), "--all", "--force", node], T_SFDISK,
                     quiet=True)


def lvm(plan: Plan, run: Runner) -> None:
    if not plan.lvm.pvs:
        return
    tool = _tool("lvm")
    cfg = ["--config", lvm_config(plan)]
    for dev, saved_uuid, _vg in plan.lvm.pvs:
        pv_uuid = plan.renames.get(saved_uuid.lower(), saved_uuid)
        keep = ["--uuid", pv_uuid, "--norestorefile"] if pv_uuid else []
        run.step(f"make the LVM physical volume {dev}",
                 [tool, "pvcreate", *cfg, "-ff", "-y", *keep, dev], T_LVM)
    for vg, extent in plan.lvm.vgs:
        devs = [d for d, _, v in plan.lvm.pvs if v == vg]
        run.step(f"make the volume group {vg}",
                 [tool, "vgcreate", *cfg, "-y", "-s", f"{extent}b", vg, *devs], T_LVM)
    for vg, lv, size in plan.lvm.lvs:
        run.step(f"make the logical volume {vg}/{lv}",
                 [tool, "lvcreate", *cfg, "-y", "-Wy", "-Zy", "-L", f"{size}b", "-n", lv, vg],
                 T_LVM)
    if plan.lvm.lvs:
        run.step("make the LVM device nodes", [tool, "vgmknodes", *cfg], T_LVM, quiet=True)


def deactivate(plan: Plan, run: Runner) -> None:
    """Let go of the restored volume groups, so that the disks have no holders (a second
    restore onto them, or a clean power-off)."""
    if not plan.lvm.vgs:
        return
    with contextlib.suppress(RestoreError):
        run.step("deactivate the restored volume groups",
                 [_tool("lvm"), "vgchange", "--config", lvm_config(plan), "-an",
                  *[vg for vg, _ in plan.lvm.vgs]], T_LVM, quiet=True)


def mkfs_argv(f: NewFs) -> list[str]:
    u, label = f.uuid_now, f.label
    if f.fstype in ("ext2", "ext3", "ext4"):
        return [_tool(f"mkfs.{f.fstype}"), "-F", "-q", *(["-U", u] if u else []),
                *(["-L", label] if label else []), f.device]
    if f.fstype == "xfs":
        return [_tool("mkfs.xfs"), "-f", "-q", *(["-m", f"uuid={u}"] if u else []),
                *(["-L", label] if label else []), f.device]
    if f.fstype == "vfat":
        bits = {"FAT12": "12", "FAT16": "16", "FAT32": "32"}.get(f.version or "", "")
        return [_tool("mkfs.vfat"), *(["-F", bits] if bits else []),
                *(["-i", u.replace("-", "")] if u else []),
                *(["-n", label] if label else []), f.device]
    if f.fstype == "swap":
        return [_tool("mkswap"), "-f", *(["-U", u] if u else []),
                *(["-L", label] if label else []), f.device]
    raise RestoreError(f"{f.device}: cannot make {f.fstype}")


def make_filesystems(plan: Plan, run: Runner) -> None:
    for f in plan.filesystems:
        what = "swap" if f.fstype == "swap" else f"the {f.fstype} filesystem"
        run.step(f"make {what} on {f.device} (UUID {f.uuid_now})", mkfs_argv(f), T_MKFS)


@contextlib.contextmanager
def mounted_tree(plan: Plan, root: Path, run: Runner) -> Iterator[Path]:
    """The restored system's filesystems mounted under ``root``, outermost first; unmounted
    (innermost first) when the block ends, also after an error."""
    done: list[Path] = []
    root.mkdir(parents=True, exist_ok=True)
    try:
        for f in plan.mounts:
            where = root / f.prefix if f.prefix else root
            where.mkdir(parents=True, exist_ok=True)
            run.step(f"mount {f.device} on {where}", [_tool("mount"), "-t", f.fstype,
                                                      f.device, str(where)], T_MOUNT)
            done.append(where)
        yield root
    finally:
        for where in reversed(done):
            with contextlib.suppress(RestoreError):
                run.step(f"unmount {where}", [_tool("umount"), str(where)], T_MOUNT,
                         quiet=True)


@contextlib.contextmanager
def chroot_mounts(root: Path, run: Runner) -> Iterator[None]:
    """/dev, /proc, /sys (and efivarfs below it when there is one) inside ``root``, for the
    restored system's own grub-install, efibootmgr and initramfs tools."""
    done: list[Path] = []
    made: list[Path] = []  # mount points the restored tree lacked: removed again
    times = os.stat(root)
    try:
        for src in ("/dev", "/proc", "/sys"):
            where = root / src.lstrip("/")
            if not where.is_dir():
                where.mkdir()
                made.append(where)
            run.step(f"bind {src}", [_tool("mount"), "--rbind", src, str(where)], T_MOUNT,
                     quiet=True)
            done.append(where)
        yield
    finally:
        for where in reversed(done):
            with contextlib.suppress(RestoreError):
                run.step(f"unmount {where}", [_tool("umount"), "-R", str(where)], T_MOUNT,
                         quiet=True)
        for where in made:
            with contextlib.suppress(OSError):
                where.rmdir()
        if made:  # the restored / keeps its archived times
            os.utime(root, ns=(times.st_atime_ns, times.st_mtime_ns))
