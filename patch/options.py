"""``[patch]``: the dnf patch window (when ``steward run`` starts ``steward patch apply``) and
how the apply behaves. The schedule grammar is the core's (agent.calendar)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.calendar import SCHEDULE, Schedule, parse_schedule
from agent.config.schema import ARGV, BOOLEAN, Parser, choice, listing, number, option

_PACKAGE_GLOB = re.compile(r"^[A-Za-z0-9_.+*?\[\]^:~-]+$")


def package_glob(v: Any) -> str:
    """``v`` if it is a package name or glob dnf can take as one word; ValueError if not."""
    # dnf's --exclude splits on commas and spaces; a leading '-' would read as an option.
    if isinstance(v, str) and v.startswith("-"):
        raise ValueError("starts with '-', which dnf would read as an option")
    if not isinstance(v, str) or not _PACKAGE_GLOB.match(v):
        raise ValueError("not a package name or glob (letters, digits, . _ + - : ~ and the "
                         "glob characters * ? [ ])")
    return v


PACKAGE_GLOBS = listing(Parser(package_glob, 'a package name or glob like "kernel*"'))
MODES = ("security", "all")
REBOOTS = ("never", "when-needed", "always-after-kernel")


@dataclass(frozen=True)
class PatchOptions:
    """``[patch]``: scheduled dnf patching (``steward patch``; the window under steward run)."""

    TABLE: ClassVar[str] = "patch"

    schedule: str | None = option(None, SCHEDULE, "when the patch window opens, local time, "
                                  "e.g. \"Sun 03:00\"; unset: steward run never patches "
                                  "(units/steward-patch.timer is the alternative)")
    random_delay: int = option(30, number(0, 720, integer=True), "minutes: the start is "
                               "delayed by a random 0..N, to spread the load on mirrors")
    duration: int = option(120, number(10, 1440, integer=True), "minutes the window stays "
                           "open: an apply must start, and retries happen, before it closes")
    catch_up: bool = option(False, BOOLEAN, "a window missed while the machine (or steward) "
                            "was down runs at the next start")
    mode: str = option("security", choice(*MODES), "security: only updates that fix a "
                       "security advisory; all: every available update")
    exclude: tuple[str, ...] = option((), PACKAGE_GLOBS, "packages never updated (dnf "
                                      "--exclude), e.g. [\"kernel*\"]")
    reboot: str = option("when-needed", choice(*REBOOTS), "never: only report that a reboot "
                         "is due; when-needed: reboot if dnf needs-restarting -r says so; "
                         "always-after-kernel: reboot whenever a kernel was updated")
    rollback_on_failure: bool = option(False, BOOLEAN, "undo the transaction (dnf history "
                                       "undo) when the health check fails after it")
    pre_backup: bool = option(False, BOOLEAN, "run steward backup first; a failed backup "
                              "cancels the apply")
    retry_interval: float = option(10, number(0.05, 1440), "minutes between attempts when "
                                   "starting or applying fails (dnf locked, repository "
                                   "unreachable), while the window is open; fractions are "
                                   "seconds: 0.5 = 30 s")
    reboot_command: tuple[str, ...] = option(
        ("/usr/bin/systemctl", "reboot"), ARGV,
        "the command that reboots the machine when the reboot policy calls for it")

    def __post_init__(self) -> None:
        if self.random_delay >= self.duration:
            raise ValueError(f"random_delay ({self.random_delay} min) must be shorter than "
                             f"duration ({self.duration} min): a start delayed past the "
                             "window's end would never happen")

    @property
    def enabled(self) -> bool:
        """Whether steward run keeps a patch window at all."""
        return self.schedule is not None

    @property
    def parsed_schedule(self) -> Schedule | None:
        return parse_schedule(self.schedule) if self.schedule is not None else None
