"""``[patch]``: the dnf patch window (when ``steward run`` starts ``steward patch apply``) and
how the apply behaves; also the small grammar of ``schedule``.

Schedule grammar (case-insensitive; local time of the machine, 24-hour clock)::

    SCHEDULE := WHEN " " HH:MM
    WHEN     := "daily" | DAYS | NTHS
    DAYS     := DAY ("," DAY)*        with ranges: "Mon-Fri", "Fri-Mon" (wraps), "Mon-Wed,Sat"
    NTHS     := NTH " " DAY ("," NTH " " DAY)*
    NTH      := "1st" | "2nd" | "3rd" | "4th" | "last"     (of the month)
    DAY      := "Mon" ... "Sun" or the full name

e.g. "Sun 03:00", "daily 02:30", "Mon,Thu 04:15", "Mon-Fri 01:00", "1st Sun 03:00",
"1st Sun,3rd Sun 03:00", "last Sat 22:00".  A plain day list and NTH items cannot be mixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.config.backup import _argv
from agent.config.schema import BOOLEAN, Parser, choice, listing, number, option
from agent.quote import quote

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
NTHS = ("1st", "2nd", "3rd", "4th", "last")
ACCEPTED = ('"daily HH:MM"; "DAYS HH:MM" with DAYS like Sun, Mon,Thu or Mon-Fri; or '
            '"NTH DAY HH:MM" like "1st Sun 03:00" or "last Sat 22:00" (NTH: 1st, 2nd, 3rd, '
            '4th, last; several joined with commas); local time, 24-hour clock')
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


class ScheduleError(ValueError):
    """A schedule that does not fit the grammar; the message lists the accepted forms."""

    def __init__(self, text: str, reason: str) -> None:
        self.text, self.reason = text, reason
        super().__init__(f"schedule {quote(text)}: {reason} (accepted: {ACCEPTED})")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: the window opens at hour:minute on the days given.

    ``weekdays`` (0 = Monday) empty and ``nth`` empty means every day; ``nth`` holds
    (position, weekday) pairs such as ("1st", 6) for the first Sunday of the month.
    """

    text: str
    hour: int
    minute: int
    weekdays: tuple[int, ...] = ()
    nth: tuple[tuple[str, int], ...] = ()

    @property
    def daily(self) -> bool:
        return not self.weekdays and not self.nth

    def oncalendar(self) -> tuple[str, ...]:
        """systemd OnCalendar= expressions for the same windows (one per NTH DAY item)."""
        hhmm = f"{self.hour:02d}:{self.minute:02d}:00"
        names = [d.capitalize() for d in DAY_NAMES]
        if self.nth:
            days = {"1st": "*-*-01..07", "2nd": "*-*-08..14", "3rd": "*-*-15..21",
                    "4th": "*-*-22..28", "last": "*-*~07/1"}
            return tuple(f"{names[d]} {days[n]} {hhmm}" for n, d in self.nth)
        if self.weekdays:
            return (f"{','.join(names[d] for d in self.weekdays)} *-*-* {hhmm}",)
        return (f"*-*-* {hhmm}",)


def _day(word: str, text: str) -> int:
    w = word.lower()
    if w in DAY_NAMES:
        return DAY_NAMES.index(w)
    if w in _FULL:
        return _FULL.index(w)
    raise ScheduleError(text, f"{quote(word)} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")


def parse_schedule(text: str) -> Schedule:
    """``"Mon,Thu 04:15"`` -> Schedule; raises ScheduleError (a ValueError) naming the
    accepted forms."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(str(text), "empty")
    *when, clock = text.split()
    m = _TIME.match(clock)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ScheduleError(text, f"{quote(clock)} is not a time of day HH:MM (00:00 to 23:59)")
    hour, minute = int(m[1]), int(m[2])
    if not when:
        raise ScheduleError(text, "which days? say daily, a list of days or e.g. 1st Sun")
    spec = " ".join(when)
    if spec.lower() == "daily":
        return Schedule(text, hour, minute)
    items = [i.strip() for i in spec.split(",")]
    if any(not i for i in items):
        raise ScheduleError(text, "an empty item in the list of days")
    nth: list[tuple[str, int]] = []
    days: set[int] = set()
    for item in items:
        words = item.split()
        if len(words) == 2 and words[0].lower() in NTHS:
            pair = (words[0].lower(), _day(words[1], text))
            if pair not in nth:
                nth.append(pair)
        elif len(words) == 1 and "-" in item:
            first, _, last = item.partition("-")
            a, b = _day(first, text), _day(last, text)
            days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # Fri-Mon wraps
        elif len(words) == 1:
            days.add(_day(item, text))
        else:
            raise ScheduleError(text, f"{quote(item)} is neither a day, a range like Mon-Fri nor "
                                "NTH DAY like 1st Sun")
    if nth and days:
        raise ScheduleError(text, "a list mixes plain days with NTH DAY items")
    if len(days) == 7:
        return Schedule(text, hour, minute)
    return Schedule(text, hour, minute, tuple(sorted(days)), tuple(sorted(nth)))


def _schedule(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    try:
        parse_schedule(v)
    except ScheduleError as e:
        raise ValueError(e.reason) from None  # build() adds the accepted forms
    return v


SCHEDULE = Parser(_schedule, ACCEPTED)
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
        ("/usr/bin/systemctl", "reboot"), Parser(_argv, '["/absolute/program", "arg", ...]'),
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
