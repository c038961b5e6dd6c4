"""Cutting a walked filesystem into segments: independent tar.zst archives of ~48 MB.

A segment is reused by the next generation when nothing in it changed, so an unchanged
re-backup writes almost nothing while each generation still holds all of its archives (hard
links). Cut points depend on the paths, not on positions (content-defined chunking at file
granularity): a file added or changed alters its own segment only. Every name of a hard-linked
inode goes into the segment of its first name, so tar stores one inode with several names.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from backup.walk import Entry, Walked

TARGET = 48 << 20  # expected raw bytes of a segment
MINIMUM, MAXIMUM = 8 << 20, 192 << 20
LARGE = 32 << 20  # a file at least this big is a segment of its own
OVERHEAD = 1024  # bytes counted per entry besides its data: headers, xattrs
# What an entry costs in time, in bytes of data: tar spends ~20 µs on each (stat, open, xattrs,
# ACLs), what zstd -3 takes for ~5 KB of text, and writes a pax header or two that zstd then
# compresses too. So a segment of 11,000 directories is no quick last job.
ENTRY_COST = 8 << 10
FORMAT = b"steward-segment-1"  # part of every key: a change of tar options renews segments
_STAT = struct.Struct("<IIIQqqQQQ")  # the stat fields of a member in a key


@dataclass
class Segment:
    fs: int  # index into the filesystems of the source
    kind: str  # "data" or "dirs"
    members: list[Entry] = field(default_factory=list)
    size: int = 0  # raw bytes (data of sparse files: allocated only)
    weight: int = 0  # bytes plus OVERHEAD per entry: what the cut points go by
    link_to: dict[int, bytes] = field(default_factory=dict)  # member index -> its first name

    def cost(self) -> int:
        """Time to archive, in bytes (for running the longest first)."""
        return self.size + ENTRY_COST * len(self.members)

    def key(self) -> str:
        """What a segment's archive depends on: names and the stat fields that change when a
        file's content or metadata does (ctime moves on every chmod, chown, xattr or write)."""
        h = hashlib.blake2b(FORMAT + self.kind.encode(), digest_size=20)
        pack = _STAT.pack
        h.update(b"".join(
            name + b"\0" + pack(s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns,
                                s.st_ctime_ns, s.st_ino, s.st_nlink, s.st_rdev)
            for name, s in self.members))
        return h.hexdigest()


_IFMT, _IFREG = 0o170000, stat.S_IFREG


class _Cutter:
    def __init__(self, fs: int, kind: str, emit: Callable[[Segment], None]) -> None:
        self.fs, self.kind, self.emit = fs, kind, emit
        self.cur: Segment | None = None

    def close(self) -> None:
        if self.cur is not None and self.cur.members:
            self.emit(self.cur)
        self.cur = None

    def add(self, e: Entry, size: int) -> Segment:
        if size >= LARGE:
            self.close()
            seg = Segment(self.fs, self.kind, [e], size, weight=size + OVERHEAD)
            self.emit(seg)
            return seg
        if self.cur is None:
            self.cur = Segment(self.fs, self.kind)
        seg = self.cur
        seg.members.append(e)
        seg.size += size
        weight = size + OVERHEAD
        seg.weight += weight
        # Cut after this entry with probability weight/TARGET, drawn from its name's hash.
        if seg.weight >= MAXIMUM or (
                seg.weight >= MINIMUM
                and zlib.crc32(e.name) < weight * (1 << 32) // TARGET):
            self.close()
        return seg


class Cutter:
    """Cuts one filesystem's walk into segments as it goes, handing each to ``emit`` once it
    is final: at once, or (holding a first name of a hard-linked inode, which later names
    join) when the walk is over."""

    def __init__(self, fs: int, emit: Callable[[Segment], None]) -> None:
        self.emit = emit
        self.held: list[Segment] = []
        self._linked: set[int] = set()  # id() of segments holding a first name
        held, linked = self.held, self._linked

        def closed(seg: Segment) -> None:  # not a method: no cycle keeping the walk alive
            (held.append if id(seg) in linked else emit)(seg)

        self.files = _Cutter(fs, "data", closed)
        self.dirs: list[Entry] = []
        self._fs = fs
        self._first: dict[int, tuple[Segment, bytes]] = {}  # inode -> segment, first name

    def file(self, e: Entry) -> None:
        st = e.st
        # Data bytes (of a sparse file, what is allocated); inline: this runs once per file.
        size = min(st.st_size, st.st_blocks * 512) if st.st_mode & _IFMT == _IFREG else 0
        if st.st_nlink <= 1:
            self.files.add(e, size)
            return
        known = self._first.get(st.st_ino)
        if known is not None:
            seg, name = known
            seg.link_to[len(seg.members)] = name
            seg.members.append(e)
            return
        if size >= LARGE:
            self.files.close()
            seg = Segment(self._fs, "data", [e], size, weight=size + OVERHEAD)
            self.held.append(seg)
        else:
            if self.files.cur is None:
                self.files.cur = Segment(self._fs, "data")
            self._linked.add(id(self.files.cur))
            seg = self.files.add(e, size)
        self._first[st.st_ino] = (seg, e.name)

    def finish(self, dirs: list[Entry]) -> None:
        self.files.close()
        for seg in self.held:
            self.emit(seg)
        self.held.clear()
        cutter = _Cutter(self._fs, "dirs", self.emit)
        for e in dirs:
            cutter.add(e, 0)
        cutter.close()


def cut(fs: int, walked: Walked) -> list[Segment]:
    """All segments of a finished walk (for tests and tools; backups cut while walking)."""
    out: list[Segment] = []
    c = Cutter(fs, out.append)
    for e in walked.files:
        c.file(e)
    c.finish(walked.dirs)
    return out
