"""The patch window under ``steward run``: when it opens (``[patch] schedule``, evaluated by
agent.calendar), what a window missed while steward was down means (``catch_up``), and
starting ``steward patch apply`` as a transient systemd unit outside steward's own cgroup, so
that restarting steward or upgrading its package cannot kill an apply that is running.

Times are kept in UTC inside: on the day the clocks go back, two local times an hour apart
compare equal.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Protocol

from agent.calendar import Schedule, first_start, local_zone, next_start, parse_schedule
from agent.fileio import write_atomic
from agent.quote import quote
from agent.system.clock import Clock
from agent.system.commands import CommandError, CommandRunner
from agent.system.systemd import active_units, run_transient
from patch.options import PatchOptions

log = logging.getLogger(__name__)

UTC = timezone.utc
TICK = timedelta(microseconds=1)
DEFAULT_ARGV = ("/usr/bin/steward", "patch", "apply")
UNIT_PREFIX = "steward-patch"  # transient units are steward-patch-<stamp>; the timer's is plain
WINDOW_END_ENV = "STEWARD_PATCH_WINDOW_END"  # tells the apply when to stop retrying
STATE_FILE = Path("patch") / "last-window.json"
MAX_WINDOWS = 10_000  # windows counted between the last recorded one and now (27 years daily)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"{dt} has no time zone; pass an aware datetime")
    return dt.astimezone(UTC)


class WindowTrigger:
    """When a schedule's windows open (agent.calendar) and each one's start with the random
    delay added: the delay is real time (an hour's shift when the clocks go back is not
    added to it), drawn once per window."""

    def __init__(self, schedule: Schedule, *, timezone: tzinfo | None = None,
                 jitter: int | None = None, rng: random.Random | None = None) -> None:
        self.schedule = schedule
        self.timezone: tzinfo = timezone or local_zone()
        self.jitter = jitter
        self.rng = rng or random.SystemRandom()

    def window_start(self, now: datetime) -> datetime:
        """The first window start at or after ``now``, without the random delay."""
        return first_start(self.schedule, self.timezone, now)

    def add_jitter(self, when: datetime) -> datetime:
        """``when`` plus a random 0..jitter seconds of real time."""
        if not self.jitter:
            return when
        delay = timedelta(seconds=self.rng.uniform(0, self.jitter))
        return (_utc(when) + delay).astimezone(self.timezone)

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime:
        """The next start at or after ``now`` with its random delay (a cron trigger's
        signature; ``previous_fire_time`` is not needed)."""
        return self.add_jitter(self.window_start(now))


def cron_trigger(schedule: str | Schedule, random_delay: float = 0, tz: tzinfo | None = None,
                 rng: random.Random | None = None) -> WindowTrigger:
    """The trigger for ``schedule`` with jitter = ``random_delay`` minutes; ``tz`` None is
    the machine's local zone (agent.calendar.local_zone)."""
    s = parse_schedule(schedule) if isinstance(schedule, str) else schedule
    return WindowTrigger(s, timezone=tz, jitter=round(random_delay * 60) or None, rng=rng)


def _trigger(schedule: str | Schedule | WindowTrigger, tz: tzinfo | None) -> WindowTrigger:
    return schedule if isinstance(schedule, WindowTrigger) else cron_trigger(schedule, tz=tz)


def next_window(schedule: str | Schedule | WindowTrigger, after: datetime,
                tz: tzinfo | None = None) -> datetime:
    """The first window start strictly after ``after`` (aware), without the random delay, in
    the schedule's time zone."""
    trigger = _trigger(schedule, tz)
    return next_start(trigger.schedule, trigger.timezone, _utc(after))


def due_window(schedule: str | Schedule | WindowTrigger, last: datetime, now: datetime,
               tz: tzinfo | None = None) -> tuple[datetime | None, int]:
    """The latest window start in (last, now] and how many there were (UTC)."""
    trigger = _trigger(schedule, tz)
    latest, count = None, 0
    t = trigger.window_start(_utc(last) + TICK)
    while _utc(t) <= _utc(now) and count < MAX_WINDOWS:
        latest, count = _utc(t), count + 1
        t = trigger.window_start(_utc(t) + TICK)
    return latest, count


@dataclass(frozen=True)
class Missed:
    window: datetime  # the latest window that closed without an apply (UTC)
    count: int  # windows that closed unrun since the last recorded one
    run: bool  # catch it up now
    reason: str


def catch_up_decision(schedule: str | Schedule | WindowTrigger, now: datetime, *,
                      duration: int, catch_up: bool,
                      tz: tzinfo | None = None) -> tuple[bool, str]:
    """Whether a missed window is run now: only with catch_up, and only if the next window
    does not open before a caught-up apply would have had its ``duration`` minutes."""
    if not catch_up:
        return False, "catch_up is off: the next window will patch"
    upcoming = next_window(schedule, now, tz)
    if _utc(upcoming) - _utc(now) < timedelta(minutes=duration):
        return False, f"the next window opens at {_show(upcoming)}, sooner than a catch-up " \
                      f"could take ({duration} min)"
    return True, "catch_up is on: patching now"


def missed_window(schedule: str | Schedule | WindowTrigger, last: datetime | None,
                  now: datetime, *, duration: int, catch_up: bool,
                  tz: tzinfo | None = None) -> Missed | None:
    """A window that opened after ``last`` (the last one recorded in last-window.json) and
    closed before ``now`` without an apply; None if there is none, or the latest is still
    open (then it simply runs), or nothing was ever recorded."""
    if last is None:
        return None
    trigger = _trigger(schedule, tz)
    latest, count = due_window(trigger, last, now)
    if latest is None or _utc(now) < latest + timedelta(minutes=duration):
        return None
    run, reason = catch_up_decision(trigger, now, duration=duration, catch_up=catch_up)
    return Missed(latest, count, run, reason)


def _show(dt: datetime) -> str:
    return dt.strftime("%a %Y-%m-%d %H:%M %Z")


# -- starting the apply ---------------------------------------------------------------------

class PatchBusy(Exception):
    """A steward-patch unit is still active; a second apply must not start."""

    def __init__(self, units: Sequence[str]) -> None:
        self.units = list(units)
        super().__init__(f"a patch run is still active: {', '.join(self.units)}")


def active_patch_units(runner: CommandRunner,
                       systemctl: Sequence[str] = ("systemctl",)) -> list[str]:
    """steward-patch units that are running: transient ones and the timer's oneshot."""
    return active_units(runner, (f"{UNIT_PREFIX}-*.service", f"{UNIT_PREFIX}.service"),
                        systemctl)


def start_transient(unit_name: str, argv: Sequence[str], runner: CommandRunner, *,
                    timeout_minutes: int = 120, description: str = "steward: dnf patching",
                    setenv: Mapping[str, str] | None = None,
                    systemctl: Sequence[str] = ("systemctl",),
                    systemd_run: Sequence[str] = ("systemd-run",)) -> str:
    """Start ``argv`` as transient unit ``unit_name`` (steward-patch-...), return its full
    name; PatchBusy while a patch unit is active, CommandError if systemd-run fails."""
    if not unit_name.startswith(UNIT_PREFIX + "-"):
        raise ValueError(f"unit name {quote(unit_name)} does not start with {UNIT_PREFIX}-")
    busy = active_patch_units(runner, systemctl)
    if busy:
        raise PatchBusy(busy)
    return run_transient(runner, unit_name, argv, description=description,
                         timeout_minutes=timeout_minutes, setenv=setenv,
                         systemd_run=systemd_run)


# -- the scheduler ----------------------------------------------------------------------------

class WallClock(Protocol):
    def now(self) -> float: ...  # seconds since the epoch (agent.system.clock.Clock)


class WindowState:
    """state_dir/patch/last-window.json: the last window steward handled (started, missed,
    gave up on) or, first, when it began keeping the schedule (a baseline, not caught up)."""

    def __init__(self, state_dir: Path, clock: WallClock | None = None) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.clock: WallClock = clock or Clock()  # dates a broken file kept aside

    def read(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            datetime.fromisoformat(data["window"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as e:
            bad = self.path.with_name(f"{self.path.name}.corrupt-{int(self.clock.now())}")
            log.error("%s is unreadable (%s); keeping it as %s and starting afresh (a window "
                      "missed meanwhile is not caught up)", self.path, e, bad)
            self.path.replace(bad)
            return None
        return data if isinstance(data, dict) else None

    def last(self) -> datetime | None:
        data = self.read()
        return _utc(datetime.fromisoformat(data["window"])) if data else None

    def record(self, window: datetime, outcome: str, now: datetime, unit: str = "",
               detail: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"window": _utc(window).isoformat(), "outcome": outcome,
                "recorded": _utc(now).isoformat(), "unit": unit, "detail": detail}
        write_atomic(self.path, json.dumps(data, indent=1) + "\n", 0o600)


@dataclass
class _Pending:
    window: datetime  # scheduled start (UTC): what is recorded once it is handled
    closes: datetime  # no start at or after this
    fire_at: datetime  # the next attempt
    catch_up: bool = False


@dataclass(frozen=True)
class PatchEvent:
    kind: str  # started | retry | catch-up | missed | gave-up
    window: datetime
    summary: str
    unit: str = ""
    detail: str = ""

    @property
    def alert(self) -> bool:
        """Whether the administrator should hear of it (the rest goes to the journal)."""
        return self.kind in ("missed", "gave-up")


class PatchScheduler:
    """Decides at each ``tick()`` (every supervisor pass) whether the apply is due, and
    starts it through systemd-run.

    Computed next times rather than APScheduler's BackgroundScheduler: the supervisor already
    wakes every few seconds, the start is one fork, and what a scheduler thread would keep in
    memory (the last run, for catch_up) must survive restarts in a state file anyway.
    """

    def __init__(self, options: PatchOptions, state_dir: Path, runner: CommandRunner, *,
                 clock: WallClock | None = None, tz: tzinfo | None = None,
                 rng: random.Random | None = None, argv: Sequence[str] = DEFAULT_ARGV,
                 systemctl: Sequence[str] = ("systemctl",),
                 systemd_run: Sequence[str] = ("systemd-run",)) -> None:
        self.options, self.runner, self.argv = options, runner, tuple(argv)
        self.clock: WallClock = clock or Clock()
        self.state = WindowState(state_dir, self.clock)
        self.systemctl, self.systemd_run = tuple(systemctl), tuple(systemd_run)
        s = options.parsed_schedule
        self.trigger = cron_trigger(s, options.random_delay, tz, rng) if s else None
        self.tz: tzinfo = self.trigger.timezone if self.trigger else UTC
        self.duration = timedelta(minutes=options.duration)
        self._pending: _Pending | None = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    def _local(self, dt: datetime) -> str:
        return _show(dt.astimezone(self.tz))

    def tick(self) -> list[PatchEvent]:
        if self.trigger is None:
            return []
        now = self._now()
        events = self._plan(now) if self._pending is None else []
        p = self._pending
        if p is not None and p.fire_at <= now and p.closes <= now:
            # steward was stopped or the machine suspended through the window
            events.append(self._closed_unrun(p, now))
            p = self._pending
        if p is not None and p.fire_at <= now < p.closes:
            events.append(self._attempt(p, now))
        return events

    def _regular(self, after: datetime) -> _Pending:
        assert self.trigger is not None
        w = _utc(next_window(self.trigger, after))
        return _Pending(w, w + self.duration, _utc(self.trigger.add_jitter(w)))

    def _plan(self, now: datetime) -> list[PatchEvent]:
        """The first plan after a start or reload: an open window, a missed one or the next."""
        assert self.trigger is not None
        last = self.state.last()
        if last is None:
            self.state.record(now, "baseline", now, detail="schedule first seen; windows "
                              "before this are not caught up")
            self._pending = self._regular(now)
            return []
        latest, count = due_window(self.trigger, last, now)
        if latest is None:  # max: a clock set back must not reopen a window already handled
            self._pending = self._regular(max(now, last))
            return []
        if now < latest + self.duration:  # open: steward (re)started inside the window
            self._pending = _Pending(latest, latest + self.duration,
                                     _utc(self.trigger.add_jitter(latest)))
            return []
        return [self._closed_unrun(_Pending(latest, latest + self.duration, latest), now,
                                   count)]

    def _closed_unrun(self, p: _Pending, now: datetime, count: int = 1) -> PatchEvent:
        """A window closed without a start: catch it up or record it as missed."""
        assert self.trigger is not None
        o = self.options
        run, reason = (False, "it was a catch-up already") if p.catch_up else \
            catch_up_decision(self.trigger, now, duration=o.duration, catch_up=o.catch_up)
        what = f"patch window {self._local(p.window)} passed without an apply" + (
            f" ({count} windows since the last recorded one)" if count > 1 else "")
        if run:
            self._pending = _Pending(p.window, now + self.duration,
                                     _utc(self.trigger.add_jitter(now)), catch_up=True)
            log.warning("%s; %s", what, reason)
            return PatchEvent("catch-up", p.window, what + "; catching up now", detail=reason)
        return self._finish(p, now, "missed", what, reason)

    def _attempt(self, p: _Pending, now: datetime) -> PatchEvent:
        name = f"{UNIT_PREFIX}-{now.astimezone(self.tz):%Y%m%d-%H%M%S}"
        kind = "catch-up of the window" if p.catch_up else "window"
        try:
            unit = start_transient(
                name, self.argv, self.runner, timeout_minutes=self.options.duration,
                description=f"steward: dnf patching ({kind} {self._local(p.window)})",
                setenv={WINDOW_END_ENV: p.closes.isoformat()},
                systemctl=self.systemctl, systemd_run=self.systemd_run)
        except (PatchBusy, CommandError) as e:
            return self._retry(p, now, str(e))
        self.state.record(p.window, "started", now, unit=unit)
        self._pending = self._regular(now)
        log.info("patch window %s: started %s", self._local(p.window), unit)
        return PatchEvent("started", p.window, f"patch apply started as {unit}", unit=unit)

    def _retry(self, p: _Pending, now: datetime, error: str) -> PatchEvent:
        retry = now + timedelta(minutes=self.options.retry_interval)
        if retry >= p.closes:
            return self._finish(p, now, "gave-up", f"patch window {self._local(p.window)}: "
                                "no apply could be started before it closed", error)
        p.fire_at = retry
        log.warning("patch window %s: could not start the apply (%s); trying again at %s",
                    self._local(p.window), error, self._local(retry))
        return PatchEvent("retry", p.window, f"apply not started; next try {self._local(retry)}",
                          detail=error)

    def _finish(self, p: _Pending, now: datetime, outcome: str, summary: str,
                detail: str) -> PatchEvent:
        self.state.record(p.window, outcome, now, detail=detail)
        self._pending = self._regular(now)
        log.warning("%s: %s", summary, detail)
        return PatchEvent(outcome, p.window, summary, detail=detail)

    def status(self) -> dict[str, Any]:
        """For status.json / ``steward status``."""
        if self.trigger is None:
            return {"schedule": None}
        p = self._pending
        return {"schedule": self.options.schedule, "last": self.state.read(),
                "window": p.window.isoformat() if p else None,
                "next_start": p.fire_at.isoformat() if p else None,
                "catch_up": bool(p and p.catch_up)}
