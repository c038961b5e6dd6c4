"""When a schedule's windows open, in local time across DST changes: the one piece of calendar
math in steward, used by the patch window and the USB backup schedule.

steward's schedules are a small grammar (agent.config.patch.Schedule: daily, some weekdays, or
the NTH weekday of the month, at HH:MM local time), so they are evaluated here directly rather
than through a cron library: EL9 and EPEL 9 carry no APScheduler, and this is all it was used
for. Two rules, as systemd timers have them: a wall-clock time repeated when the clocks go
back opens one window (the first), not two; a time skipped when the clocks go forward is read
with the offset before the change (02:30 becomes 03:30 summer time) rather than dropped.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path

from agent.config.patch import Schedule
from agent.quote import quote

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
