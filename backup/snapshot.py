"""Consistent reads: LVM snapshots of the source's filesystems (``[backup] snapshot``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from agent.config.backup import BackupOptions
from backup.mounts import Filesystem


@contextlib.contextmanager
def taken(filesystems: Sequence[Filesystem], opts: BackupOptions,
          say: Callable[[str], None]) -> Iterator[list[Filesystem]]:
    """The filesystems to read: the live ones, or snapshots of those on LVM."""
    yield list(filesystems)
