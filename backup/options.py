"""``[backup]``: where generations go, how many are kept, what is left out, hooks, snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from agent.config.schema import ARGV, BOOLEAN, GLOBS, listing, number, option
from agent.config.sections import PATH

DEFAULT_EXCLUDES = ("/proc/*", "/sys/*", "/dev/*", "/run/*", "/tmp/*",  # noqa: S108 - patterns
                    "/var/cache/dnf/*")




COMMANDS = listing(ARGV)


@dataclass(frozen=True)
class BackupOptions:
    """``[backup]``: the whole-system backup (``steward backup``)."""

    TABLE: ClassVar[str] = "backup"

    target: str | None = option(None, PATH,
                                "folder holding the generations, e.g. the USB drive's data "
                                "partition (--target overrides)")
    source: str = option("/", PATH, "the tree backed up: / is the whole system (every local "
                         "filesystem below it); --source overrides")
    keep: int = option(7, number(1, 1000, integer=True), "verified generations kept; older "
                       "ones are deleted after a new one is committed")
    exclude: tuple[str, ...] = option(DEFAULT_EXCLUDES, GLOBS,
                                      "left out: '/x/*' is relative to the source root, a "
                                      "pattern without '/' matches names anywhere")
    compression_level: int = option(3, number(1, 19, integer=True), "zstd level")
    jobs: int = option(0, number(0, 64, integer=True), "archives compressed at once (0: one "
                       "per CPU); one more is read back meanwhile")
    pre_hooks: tuple[tuple[str, ...], ...] = option(
        (), COMMANDS, "commands run before the backup (quiesce services); one failing stops it")
    post_hooks: tuple[tuple[str, ...], ...] = option(
        (), COMMANDS, "commands run after the backup, also after a failure")
    hook_timeout: float = option(300.0, number(1, 86400), "seconds each hook may take")
    snapshot: bool = option(False, BOOLEAN, "read filesystems on LVM from a snapshot when the "
                            "volume group has room")
    snapshot_size: int = option(10, number(1, 100, integer=True), "snapshot size, percent of "
                                "the logical volume")
    fsfreeze: bool = option(False, BOOLEAN, "fsfreeze a filesystem while its snapshot is taken")
