"""When a schedule's windows open, in local time across DST changes: the one piece of calendar
math in steward, used by the patch window and the USB backup schedule.

steward's schedules are a small grammar (Schedule below: daily, some weekdays, or
the NTH weekday of the month, at HH:MM local time), so they are evaluated here directly rather
than through a cron library: EL9 and EPEL 9 carry no APScheduler, and this is all it was used
for. Two rules, as systemd timers have them: a wall-clock time repeated when the clocks go
back opens one window (the first), not two; a time skipped when the clocks go forward is read
with the offset before the change (02:30 becomes 03:30 summer time) rather than dropped.

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

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from agent.config.schema import Parser
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
UTC = timezone.utc
_NTH_FIRST_DAY = {"1st": 1, "2nd": 8, "3rd": 15, "4th": 22}
_HORIZON_DAYS = 800  # every grammar form recurs within ~5 weeks; this bounds a broken zone


def local_zone() -> tzinfo:
    """The machine's time zone: $TZ if it names one, else /etc/localtime (by its zoneinfo name
    when it is a symlink into a zoneinfo tree, as timedatectl makes it), else UTC."""
    from zoneinfo import ZoneInfo  # only a schedule needs the zone database

    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
            pass  # not a zone name (e.g. a POSIX TZ string): fall back to the file
    localtime = Path("/etc/localtime")
    target = os.path.realpath(localtime)
    if "/zoneinfo/" in target:
        try:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
            pass
    try:
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (ValueError, OSError):
        return UTC


def _last_day(d: date) -> int:
    nxt = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (nxt - timedelta(days=1)).day


def matches(schedule: Schedule, d: date) -> bool:
    """Whether a window of ``schedule`` opens on the local date ``d``."""
    if schedule.nth:
        for nth, weekday in schedule.nth:
            first = _last_day(d) - 6 if nth == "last" else _NTH_FIRST_DAY[nth]
            if d.weekday() == weekday and first <= d.day < first + 7:
                return True
        return False
    return not schedule.weekdays or d.weekday() in schedule.weekdays


def next_start(schedule: Schedule, tz: tzinfo, after: datetime) -> datetime:
    """The first window start strictly after the aware datetime ``after``, in ``tz``."""
    return first_start(schedule, tz, after + timedelta(microseconds=1))


def first_start(schedule: Schedule, tz: tzinfo, at: datetime) -> datetime:
    """The first window start at or after the aware datetime ``at``, in ``tz`` (labelled with
    the offset the clock shows then)."""
    if at.tzinfo is None:
        raise ValueError(f"{at} has no time zone; pass an aware datetime")
    day = at.astimezone(tz).date() - timedelta(days=1)  # a skipped time may land a day early
    for _ in range(_HORIZON_DAYS):
        if matches(schedule, day):
            # fold=0: the first of a repeated time; for a skipped one, the offset before.
            wall = datetime(day.year, day.month, day.day, schedule.hour, schedule.minute,
                            tzinfo=tz)
            start = wall.astimezone(UTC)
            if start >= at:
                return start.astimezone(tz)
        day += timedelta(days=1)
    raise ValueError(f"schedule {quote(schedule.text)} opens no window within {_HORIZON_DAYS} "
                     "days")
