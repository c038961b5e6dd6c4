"""Files that changed while a segment was archived: each member is looked at again once tar has
read it (lstat, relative to the read root) and compared with what the walk saw. What tar
archived of such a file is what it read, which may differ from the index row (the walk's stat):
grown, shrunk (tar pads a file that shrinks under it with zeros), removed (not in the archive),
replaced by another kind of file (a directory: tar stores the directory). The backup names them,
in its report and its manifest; it is still committed and verified."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from backup.walk import Entry

_KINDS = {stat.S_IFREG: "a file", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symlink",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket"}
SHRANK = ": File shrank by "  # tar (C locale): "tar: NAME: File shrank by N bytes; padding ..."


def _how(old: os.stat_result, new: os.stat_result | None) -> str | None:
    if new is None:
        return "removed while read (not in the archive)"
    kind, was = stat.S_IFMT(new.st_mode), stat.S_IFMT(old.st_mode)
    if kind != was:
        return f"replaced by {_KINDS.get(kind, 'something else')} while read"
    if new.st_ino != old.st_ino:
        return "replaced while read"
    if kind == stat.S_IFDIR:
        return None  # a directory's times move as entries come and go: not a change of data
    if new.st_size > old.st_size:
        return f"grew from {old.st_size} to {new.st_size} bytes while read"
    if new.st_size < old.st_size:
        return f"shrank from {old.st_size} to {new.st_size} bytes while read"
    if new.st_mtime_ns != old.st_mtime_ns or new.st_ctime_ns != old.st_ctime_ns:
        return "changed while read"
    return None


def changed(root: str, members: Sequence[Entry], warnings: Sequence[str]
            ) -> list[tuple[bytes, str]]:
    """(name, how) of every member that is not as the walk saw it; ``warnings``: tar's, which
    tell a file padded with zeros."""
    rootb = os.fsencode(root)
    fd = os.open(rootb, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    out = []
    try:
        lstat = os.lstat
        for e in members:
            try:
                new: os.stat_result | None = lstat(e.name, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                new = None
            old = e.st
            if (new is not None and new.st_mtime_ns == old.st_mtime_ns
                    and new.st_ctime_ns == old.st_ctime_ns and new.st_ino == old.st_ino
                    and new.st_size == old.st_size):
                continue  # the usual case, tested first and cheaply
            how = _how(old, new)
            if how is not None:
                out.append((e.name, how))
    finally:
        os.close(fd)
    if out and any(SHRANK in w for w in warnings):
        padded = {w.split(SHRANK, 1)[0][len("tar: "):] for w in warnings if SHRANK in w}
        out = [(n, how + "; tar padded it with zeros to its old size"
                if os.fsdecode(n) in padded else how) for n, how in out]
    return out
