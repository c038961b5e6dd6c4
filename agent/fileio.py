"""Writing files so that a reader never sees half of one (temp file, fsync, rename), the one
exclusive lock with a timeout that every writer shares, and reading exactly n bytes from a
stream."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str, mode: int = 0o644, durable: bool = True) -> None:
    """Readers see the old file or the new one, never half. ``durable`` also survives a power
    cut (fsync of the file and its folder); what is rewritten every few seconds can skip it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def read_exactly(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes from ``read`` (a file's read, a socket's recv), called until it gave them all
    or nothing more (the end of the stream: fewer than ``n`` then, for the caller to refuse)."""
    data = b""
    while len(data) < n:
        chunk = read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Locked(Exception):
    """Another process holds the lock (``holder``: what it wrote into the lock file, if any)."""

    def __init__(self, path: str, holder: str = "") -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked{f' by {holder}' if holder else ''}")


@contextlib.contextmanager
def flocked(path: str | os.PathLike[str], timeout: float | None = 0.0, *, create: bool = True,
            note_pid: bool = False) -> Iterator[int]:
    """An exclusive BSD lock on ``path`` for the block, its descriptor yielded. Waits up to
    ``timeout`` seconds (0: not at all; None: for ever), then raises Locked. ``create`` makes
    a lock file (mode 0600); a device node is opened read-only. ``note_pid`` writes this
    process's pid into the file for the next one's Locked.holder."""
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() \
                        if create else ""
                    raise Locked(os.fspath(path), holder) from None
                time.sleep(0.1)
        if note_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)


MAX_JSON = 16 * 1024 * 1024  # bytes of a JSON file steward reads whole (its own records)


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON) -> Any:
    """A JSON file that may be hostile (a USB drive's manifest): a regular file (a FIFO would
    block the read forever), at most ``limit`` bytes, nesting that would exhaust the parser's
    recursion refused; every refusal a ValueError that says why (OSError as the file gives
    it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit} bytes")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except RecursionError:
        raise ValueError("nested too deep to be a steward file") from None
