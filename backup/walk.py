"""Walking a source's filesystems: what is archived, in a stable order, with excludes applied.

Paths are bytes (Linux names need not be UTF-8). Each filesystem is walked from its read root
(the live folder or a snapshot) and never across a mount point: a filesystem below it is walked
as its own, the mount points of excluded filesystems (proc, tmpfs, nfs, ...) keep just their
directory.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from backup.mounts import Filesystem, SourceLayout


class Entry(NamedTuple):
    name: bytes  # relative to the filesystem's read root; b"." for its root
    st: os.stat_result


class Excludes:
    """Patterns from ``[backup] exclude``: one with a '/' is matched against the whole path
    from the source root ("/var/cache/*"); one without, against each name ("*.tmp")."""

    def __init__(self, patterns: Iterable[str]) -> None:
        def compiled(pats: list[str]) -> re.Pattern[bytes] | None:
            if not pats:
                return None
            return re.compile(os.fsencode("|".join(fnmatch.translate(p) for p in pats)))

        self._path = compiled([p for p in patterns if "/" in p])
        self._name = compiled([p for p in patterns if "/" not in p])

    def __call__(self, path: bytes) -> bool:
        """``path``: b"/" + path relative to the source root."""
        if self._path is not None and self._path.match(path):
            return True
        return self._name is not None and bool(self._name.match(path.rsplit(b"/", 1)[-1]))


@dataclass
class Walked:
    files: list[Entry]  # everything but directories, in walk order (unless handed on)
    dirs: list[Entry]
    nfiles: int = 0  # entries that are not directories
    excluded: int = 0  # entries left out by a pattern or as the target
    skipped_sockets: int = 0


def walk(fs: Filesystem, layout: SourceLayout, excludes: Excludes,
         skip_inodes: frozenset[tuple[int, int]] = frozenset(),
         on_file: Callable[[Entry], None] | None = None) -> Walked:
    """Everything on ``fs`` below its read root, sorted by name in each directory.

    ``skip_inodes``: (st_dev, st_ino) pairs left out with their subtree (the backup target,
    swap files). ``on_file``: takes each non-directory as it is found (so archiving can start
    while the walk goes on) instead of ``files`` collecting them.
    """
    root = os.fsencode(fs.read_root)
    prefix = os.fsencode(fs.prefix)
    out = Walked([], [])
    top = os.lstat(root)
    out.dirs.append(Entry(b".", top))
    stack = [b""]
    lstat = os.lstat
    keep = on_file or out.files.append
    boundaries = {os.fsencode(k): v for k, v in layout.boundaries.items()}
    while stack:
        rel = stack.pop()
        try:
            names = os.listdir(root + b"/" + rel if rel else root)
        except FileNotFoundError:
            continue  # removed while walking
        names.sort()
        subdirs = []
        base = root + b"/" + rel + b"/" if rel else root + b"/"
        for name in names:
            child = rel + b"/" + name if rel else name
            logical = prefix + b"/" + child if prefix else child
            if excludes(b"/" + logical):
                out.excluded += 1
                continue
            try:
                st = lstat(base + name)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in skip_inodes:
                out.excluded += 1
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                reason = boundaries.get(logical)
                if reason == "filesystem":
                    continue  # walked as its own filesystem
                out.dirs.append(Entry(child, st))
                if reason is None and st.st_dev == top.st_dev:
                    subdirs.append(child)
            elif stat.S_ISSOCK(mode):
                out.skipped_sockets += 1  # recreated by their services; tar cannot store them
            else:
                out.nfiles += 1
                keep(Entry(child, st))
        stack.extend(reversed(subdirs))
    return out
