"""Which filesystems a backup of a source tree reads, from /proc/self/mountinfo.

Local filesystems on block devices are backed up; pseudo, memory and network filesystems
(proc, tmpfs, nfs, ...) keep only their mount point directory. A bind mount of a folder is
left out: its content is backed up where it really lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

LOCAL = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "f2fs", "jfs",
                   "reiserfs", "ntfs", "ntfs3", "hfsplus"})


@dataclass(frozen=True)
class Mount:
    target: str  # absolute mount point
    source: str  # the device
    fstype: str
    root: str  # the folder of the filesystem mounted there ("/" unless a bind mount)
    options: str

    @property
    def local(self) -> bool:
        return self.fstype in LOCAL and (self.root == "/" or self.fstype == "btrfs")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    raw = field.encode("utf-8", "surrogateescape")
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out).decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 6 or len(r) < 2:
            continue
        mounts.append(Mount(_unescape(f[4]), _unescape(r[1]), r[0], _unescape(f[3]), f[5]))
    return mounts


def read_mounts(path: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return parse_mountinfo(fh.read())


@dataclass(frozen=True)
class Filesystem:
    """One filesystem of the source: archived under ``prefix`` (relative to the source root,
    "" for the source's own), read from ``read_root`` (the live folder, or a snapshot)."""

    prefix: str
    read_root: str
    mount: Mount


@dataclass(frozen=True)
class SourceLayout:
    source: str
    filesystems: tuple[Filesystem, ...]
    # Mount points below the source (relative) whose content is not read here: the ones of
    # other filesystems in ``filesystems`` and the excluded ones, with the reason.
    boundaries: dict[str, str]


def _under(path: str, top: str) -> str | None:
    """``path`` relative to ``top`` ("" for top itself) or None when outside."""
    if top == "/":
        return path.lstrip("/")
    if path == top:
        return ""
    return path[len(top) + 1:] if path.startswith(top + "/") else None


def source_layout(source: str, mounts: list[Mount]) -> SourceLayout:
    """The filesystems of the tree at ``source`` (a real path) and the mount points in it."""
    # The last mount on a point is the visible one.
    visible: dict[str, Mount] = {}
    for m in mounts:
        visible[m.target] = m
    own = max((m for m in visible.values() if _under(source, m.target) is not None),
              key=lambda m: len(m.target), default=None)
    filesystems: list[Filesystem] = []
    boundaries: dict[str, str] = {}
    if own is not None and own.local:
        filesystems.append(Filesystem("", source, own))
    seen_devices = {own.source} if own is not None and own.local else set()
    for target in sorted(visible, key=lambda t: (t.count("/"), t)):
        rel = _under(target, source)
        if not rel:
            continue
        m = visible[target]
        hidden = any(rel.startswith(b + "/") for b in boundaries
                     if boundaries[b] != "filesystem")
        if hidden:
            continue
        if not m.local:
            boundaries[rel] = ("bind mount" if m.fstype in LOCAL else m.fstype)
        elif m.source in seen_devices:
            boundaries[rel] = "mounted twice"
        else:
            seen_devices.add(m.source)
            filesystems.append(Filesystem(rel, os.path.join(source, rel), m))
            boundaries[rel] = "filesystem"
    return SourceLayout(source, tuple(filesystems), boundaries)
