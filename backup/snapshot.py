"""Consistent reads: LVM snapshots of the source's filesystems (``[backup] snapshot``).

A filesystem on an LVM logical volume whose volume group has room for a snapshot of
``snapshot_size`` percent of the volume is read from a snapshot (taken with the filesystem
frozen by fsfreeze when ``fsfreeze`` is set), mounted read-only on a private temporary folder;
the snapshot is unmounted and removed afterwards, also after an error or an interrupt. A
snapshot left by a crashed run is removed before a new one is taken. Anything else is read
live, and ``say`` tells why. A failing snapshot is not fatal: that filesystem is read live.

Taking and mounting a snapshot needs device-mapper in the kernel; :func:`decide` only reads
LVM metadata (``lvs``) and works without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from backup.mounts import Filesystem, read_mounts
from backup.options import BackupOptions
from backup.progress import human

PREFIX = "steward-snap-"
_FIELDS = "lv_path,lv_dm_path,vg_name,lv_name,lv_size,vg_free,vg_extent_size,lv_attr,origin"
_LVM_TIMEOUT = 120.0
_TIMEOUT = 60.0
_MOUNT_OPTIONS = {"xfs": "nouuid", "ext3": "noload", "ext4": "noload"}  # journal unreplayed
_LIVE = ": read live"
# While a filesystem is frozen, LVM must not write its metadata backups (/etc/lvm may be on it).
_NO_BACKUP = "backup { backup = 0 archive = 0 }"


@dataclass(frozen=True)
class Decision:
    fs: Filesystem
    lv: str | None  # "vg/lv", None when not on LVM
    size: int  # bytes of the snapshot
    ok: bool  # a snapshot is to be taken
    reason: str  # why not
    stale: str | None = None  # "vg/steward-snap-lv" left by a crashed run


def _tool(run: CommandRunner, tool: str, args: Sequence[str], timeout: float) -> str:
    exe = which(tool)
    if exe is None:
        raise CommandError([tool], None, "", "not installed")
    return run.run([exe, *args], timeout=timeout).stdout


def _lvm(run: CommandRunner, config: str | None, cmd: str, *args: str) -> str:
    return _tool(run, cmd, [*(["--config", config] if config else []), *args], _LVM_TIMEOUT)


def _names(path: str) -> set[str]:
    """``path`` and, where it exists, the device node its symlinks lead to."""
    if not path:
        return set()
    return {path, os.path.realpath(path)} if os.path.exists(path) else {path}


def _dm_path(vg: str, lv: str) -> str:
    return f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def decide(filesystems: Sequence[Filesystem], opts: BackupOptions,
           runner: CommandRunner | None = None, *,
           lvm_config: str | None = None) -> list[Decision]:
    """Which of ``filesystems`` can be read from a snapshot, from LVM's metadata.

    ``lvm_config``: extra ``--config`` for the LVM commands (tests without device-mapper)."""
    why = "not on LVM"
    try:
        out = _lvm(runner or CommandRunner(), lvm_config, "lvs", "--reportformat", "json",
                   "--units", "b", "--nosuffix", "-o", _FIELDS)
        rows: list[dict[str, Any]] = [r for rep in json.loads(out).get("report", [])
                                      for r in rep.get("lv", [])]
    except (CommandError, ValueError, AttributeError) as e:
        rows, why = [], f"LVM could not be queried ({e})"
    left: dict[str, int] = {}  # free bytes of each volume group not yet promised
    decisions = []
    for fs in filesystems:
        source = _names(fs.mount.source)
        row = next((r for r in rows if source & (_names(str(r.get("lv_path", "")))
                                                 | _names(str(r.get("lv_dm_path", ""))))), None)
        if row is None:
            decisions.append(Decision(fs, None, 0, False, why + _LIVE))
            continue
        vg, name = str(row["vg_name"]), str(row["lv_name"])
        lv, snap = f"{vg}/{name}", PREFIX + name
        stale = next((f"{vg}/{snap}" for r in rows if r["vg_name"] == vg
                      and r["lv_name"] == snap and r.get("origin") == name), None)
        extent = max(1, int(row["vg_extent_size"]))
        wanted = -(-int(row["lv_size"]) * opts.snapshot_size // 100)
        size = max(1, -(-wanted // extent)) * extent
        free = left.setdefault(vg, int(row["vg_free"]))
        if str(row["lv_attr"])[:1] in ("s", "S"):
            reason = f"{lv} is itself a snapshot"
        elif fs.mount.fstype == "btrfs":
            reason = f"btrfs on {lv}: a snapshot would carry the same filesystem UUID"
        elif free < size:
            reason = (f"volume group {vg} has {human(free)} free; a {opts.snapshot_size} % "
                      f"snapshot of {lv} needs {human(size)}")
        else:
            left[vg] = free - size
            decisions.append(Decision(fs, lv, size, True, "", stale))
            continue
        decisions.append(Decision(fs, lv, size, False, reason + _LIVE, stale))
    return decisions


def _umount(run: CommandRunner, where: str) -> None:
    for attempt in range(3):
        try:
            _tool(run, "umount", [where], _TIMEOUT)
            return
        except CommandError:
            if attempt == 2:
                raise
            time.sleep(1)


def _remove_stale(run: CommandRunner, config: str | None, snap: str,
                  say: Callable[[str], None]) -> None:
    """Unmount (from our temporary folders) and remove a snapshot left by a crashed run."""
    vg, name = snap.split("/", 1)
    devices = _names(_dm_path(vg, name)) | _names(f"/dev/{vg}/{name}")
    ours = os.path.join(tempfile.gettempdir(), PREFIX)
    try:
        for m in reversed(read_mounts()):
            if _names(m.source) & devices and m.target.startswith(ours):
                _umount(run, m.target)
                with contextlib.suppress(OSError):
                    os.rmdir(m.target)
        _lvm(run, config, "lvremove", "-f", snap)
        say(f"removed snapshot {snap}, left by an interrupted backup")
    except (CommandError, OSError) as e:
        say(f"could not remove snapshot {snap}, left by an interrupted backup: {e}")


@contextlib.contextmanager
def _snapshot(d: Decision, opts: BackupOptions, run: CommandRunner, config: str | None,
              say: Callable[[str], None]) -> Iterator[Filesystem]:
    assert d.lv is not None
    vg, name = d.lv.split("/", 1)
    snap, mount = f"{vg}/{PREFIX}{name}", d.fs.mount
    created, where, mounted = False, "", False
    try:
        frozen, create_config = False, config
        try:
            if opts.fsfreeze:
                _tool(run, "fsfreeze", ["--freeze", mount.target], _TIMEOUT)
                frozen = True
                create_config = f"{config} {_NO_BACKUP}" if config else _NO_BACKUP
            _lvm(run, create_config, "lvcreate", "--snapshot", "--name", PREFIX + name,
                 "--size", f"{d.size}b", d.lv)
            created = True
        finally:
            if frozen:  # never leave it frozen; nothing is said while it is (say may write)
                try:
                    _tool(run, "fsfreeze", ["--unfreeze", mount.target], _TIMEOUT)
                except CommandError as e:
                    say(f"WARNING: {mount.target} may still be frozen ({e}): "
                        f"run fsfreeze --unfreeze {mount.target}")
        where = tempfile.mkdtemp(prefix=f"{PREFIX}{name}-")
        extra = _MOUNT_OPTIONS.get(mount.fstype)
        _tool(run, "mount", ["-t", mount.fstype, "-o",
                             "ro,nodev,nosuid,noexec" + (f",{extra}" if extra else ""),
                             _dm_path(vg, PREFIX + name), where], _TIMEOUT)
        mounted = True
        rel = os.path.relpath(d.fs.read_root, mount.target)
        say(f"{mount.target}: reading a {human(d.size)} snapshot of {d.lv}")
        yield Filesystem(d.fs.prefix, where if rel == "." else os.path.join(where, rel), mount)
    finally:
        try:
            if mounted:
                _umount(run, where)
            if where:
                os.rmdir(where)
            if created:
                _lvm(run, config, "lvremove", "-f", snap)
        except (CommandError, OSError) as e:
            say(f"WARNING: snapshot {snap} not removed ({e}): "
                + (f"umount {where}; " if mounted else "") + f"lvremove -f {snap}")


@contextlib.contextmanager
def taken(filesystems: Sequence[Filesystem], opts: BackupOptions,
          say: Callable[[str], None], runner: CommandRunner | None = None, *,
          lvm_config: str | None = None) -> Iterator[list[Filesystem]]:
    """The filesystems to read: the live ones, or snapshots of those on LVM."""
    live = list(filesystems)
    if not opts.snapshot:
        yield live
        return
    if os.geteuid() != 0:
        say("snapshots need root: filesystems read live")
        yield live
        return
    run = runner or CommandRunner()
    decisions = decide(live, opts, run, lvm_config=lvm_config)
    if any(d.stale for d in decisions):
        for d in decisions:
            if d.stale:
                _remove_stale(run, lvm_config, d.stale, say)
        decisions = decide(live, opts, run, lvm_config=lvm_config)
    with contextlib.ExitStack() as stack:
        read = []
        for d in decisions:
            if d.ok:
                try:
                    read.append(stack.enter_context(_snapshot(d, opts, run, lvm_config, say)))
                    continue
                except (CommandError, OSError) as e:
                    say(f"{d.fs.mount.target}: no snapshot of {d.lv} ({e}){_LIVE}")
            else:
                say(f"{d.fs.mount.target}: {d.reason}")
            read.append(d.fs)
        yield read
