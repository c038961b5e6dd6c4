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
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from errno import ELOOP, ENOENT, ENOTDIR
from typing import NamedTuple

from backup.mounts import Filesystem, SourceLayout

# A directory being listed: never followed if it became a symlink meanwhile.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS = _DIR_FLAGS & ~os.O_NOFOLLOW  # the read root is given, not found: may be a link
_GONE = (ENOENT, ENOTDIR, ELOOP)  # a directory removed, or replaced by a file or symlink
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


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
        # What a path must begin with for each path pattern to match: its text up to the
        # first wildcard ('*' matches '/' too, so nothing after it narrows the place).
        self._starts = [os.fsencode(re.split(r"[*?\[]", p, maxsplit=1)[0])
                        for p in patterns if "/" in p]

    def within(self, base: bytes) -> bool:
        """Can a pattern match an entry of the directory ``base`` (b"/"-rooted, ending in
        b"/")? Not when there are only path patterns and each one's start neither begins with
        ``base`` nor is begun by it: then its entries need no test."""
        return self._name is not None or any(
            start.startswith(base) or base.startswith(start) for start in self._starts)

    def __call__(self, path: bytes, name: bytes | None = None) -> bool:
        """``path``: b"/" + path relative to the source root; ``name``: its last part, when
        the caller has it at hand."""
        if self._path is not None and self._path.match(path):
            return True
        if self._name is None:
            return False
        return self._name.match(path.rsplit(b"/", 1)[-1] if name is None else name) is not None


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
    out = Walked([], [])
    top = os.lstat(root)
    out.dirs.append(Entry(b".", top))
    # The loop runs once per file, mostly in lstat: locals and cheap tests only.
    lstat, isdir, sock, dev = os.lstat, stat.S_ISDIR, stat.S_IFSOCK, top.st_dev
    keep, dirs = on_file or out.files.append, out.dirs.append
    skip = skip_inodes or None
    boundaries = {os.fsencode(k): v for k, v in layout.boundaries.items()}
    logical_root = b"/" + os.fsencode(fs.prefix) + b"/" if fs.prefix else b"/"
    nfiles = nexcluded = nsockets = 0
    stack = [b""]
    while stack:
        rel = stack.pop()
        listed = _listing(root + b"/" + rel) if rel else _listing(root, _ROOT_FLAGS)
        if listed is None:
            continue
        fd, names = listed  # names are looked up in fd, not walked from the root each time
        try:
            subdirs = []
            relbase = rel + b"/" if rel else b""
            test = excludes if excludes.within(logical_root + relbase) else None
            for name in names:
                child = relbase + name
                if test is not None and test(logical_root + child, name):
                    nexcluded += 1
                    continue
                try:
                    st = lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                if skip is not None and (st.st_dev, st.st_ino) in skip:
                    nexcluded += 1
                    continue
                if isdir(st.st_mode):
                    reason = boundaries.get(logical_root[1:] + child) if boundaries else None
                    if reason == "filesystem":
                        continue  # walked as its own filesystem
                    dirs(Entry(child, st))
                    if reason is None and st.st_dev == dev:
                        subdirs.append(child)
                elif st.st_mode & 0o170000 == sock:
                    nsockets += 1  # recreated by their services; tar cannot store them
                else:
                    nfiles += 1
                    keep(Entry(child, st))
        finally:
            os.close(fd)
        stack.extend(reversed(subdirs))
    out.nfiles, out.excluded, out.skipped_sockets = nfiles, nexcluded, nsockets
    return out


def _listing(path: bytes, flags: int = _DIR_FLAGS) -> tuple[int, list[bytes]] | None:
    """A directory's descriptor and its names, sorted; None if it went away while walking
    (removed, or replaced by a file or a symlink). The names are read from the descriptor:
    the directory itself, not whatever the path leads to by then."""
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        listed = os.listdir(fd)  # str from a descriptor: encoded back all in one
    except BaseException:
        os.close(fd)
        raise
    names = "\0".join(listed).encode(_FS_ENCODING, _FS_ERRORS).split(b"\0") if listed else []
    names.sort()
    return fd, names
