"""The patch window: when it opens (agent.calendar asked with a controlled ``now``,
never by sleeping), jitter, DST, catch_up, no second start, the transient unit's command line;
the shipped units checked by systemd-analyze; a real systemd in a container proving that the
apply outlives a restart of the service that started it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

import patch.window as pw
from agent.calendar import parse_schedule
from agent.config.schema import build
from agent.system.commands import CommandError, Completed
from patch.options import PatchOptions
from tests.clocks import FakeClock
from tests.conftest import REPO

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
MIN = timedelta(minutes=1)
ACTIVE = "steward-patch-20250330-030000.service loaded activating start steward: dnf patching\n"


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class FakeRunner:
    """systemctl list-units answers ``active``; systemd-run is recorded (and fails while
    ``fail`` is above zero)."""

    def __init__(self) -> None:
        self.active = ""
        self.fail = 0
        self.started: list[list[str]] = []

    def run(self, argv, *, timeout=30.0, ok_codes=(0,), input=None):
        argv = list(argv)
        if "list-units" in argv:
            return Completed(tuple(argv), 0, self.active, "")
        if self.fail:
            self.fail -= 1
            raise CommandError(argv, 1, "Failed to start transient service unit: busy bus")
        self.started.append(argv)
        return Completed(tuple(argv), 0, "", "")


def fixed(fraction):
    """Jitter chosen by the test: 0 = no delay, 1 = the whole random_delay."""
    return SimpleNamespace(uniform=lambda a, b: a + (b - a) * fraction)


def options(**table):
    return build(PatchOptions, {"schedule": "Sun 03:00", **table}, "<test>", "patch")


def scheduler(tmp_path, clock, runner=None, rng=0.0, **table):
    return pw.PatchScheduler(options(**table), tmp_path, runner or FakeRunner(), clock=clock,
                          tz=BERLIN, rng=fixed(rng))


def run_until(sched, clock, end, step=MIN):
    """Tick like the supervisor loop does, with the clock moved forward; events with times."""
    seen = []
    while clock.at < end:
        seen += [(clock.at.astimezone(UTC), e) for e in sched.tick()]
        clock.at = clock.at.astimezone(UTC) + step  # in UTC: wall-clock sums ignore DST
    return seen


def started(seen):
    return [(at, e) for at, e in seen if e.kind == "started"]


def record(tmp_path, window):
    pw.WindowState(tmp_path).record(window, "started", window)


# -- when the window opens ---------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("Sun 03:00", berlin(2025, 3, 27, 12), berlin(2025, 3, 30, 3)),
    ("daily 02:30", berlin(2025, 6, 1, 2, 30), berlin(2025, 6, 2, 2, 30)),  # strictly after
    ("Mon,Thu 04:15", berlin(2025, 6, 2, 5), berlin(2025, 6, 5, 4, 15)),
    ("Fri-Mon 01:00", berlin(2025, 6, 3, 12), berlin(2025, 6, 6, 1)),
    ("1st Sun 03:00", berlin(2025, 6, 2), berlin(2025, 7, 6, 3)),
    ("last Sat 22:00", berlin(2025, 6, 1), berlin(2025, 6, 28, 22)),
    ("1st Sun,3rd Sun 03:00", berlin(2025, 6, 2), berlin(2025, 6, 15, 3)),
])
def test_next_window_is_the_first_start_strictly_after(schedule, after, expected):
    got = pw.next_window(schedule, after, BERLIN)
    assert got == expected and got.utcoffset() == expected.utcoffset()


def test_next_window_refuses_a_time_without_a_zone():
    with pytest.raises(ValueError, match="no time zone"):
        pw.next_window("Sun 03:00", datetime(2025, 3, 27), BERLIN)


def test_the_trigger_fires_in_the_window_with_jitter_bounded_by_random_delay():
    trigger = pw.cron_trigger("Sun 03:00", random_delay=30, tz=BERLIN)
    window = berlin(2025, 3, 30, 3)  # the spring-forward day: 03:00 CEST
    assert trigger.jitter == 1800
    delays = {trigger.get_next_fire_time(None, berlin(2025, 3, 28, 12)) - window
              for _ in range(300)}
    assert all(timedelta(0) <= d <= timedelta(minutes=30) for d in delays)
    assert max(delays) - min(delays) > timedelta(minutes=15)  # spread, not a constant
    assert pw.cron_trigger("Sun 03:00", random_delay=0, tz=BERLIN).get_next_fire_time(
        None, berlin(2025, 3, 28, 12)) == window


def test_jitter_is_real_time_even_across_the_clocks_going_back():
    # 02:50 CEST + 30 min on 26 Oct 2025 is 02:20 CET, not 03:20 CET (wall-clock jitter)
    trigger = pw.cron_trigger("Sun 02:50", random_delay=30, tz=BERLIN, rng=fixed(1.0))
    fire = trigger.get_next_fire_time(None, berlin(2025, 10, 25, 12))
    assert fire.astimezone(UTC) == utc(2025, 10, 26, 0, 50) + 30 * MIN


def test_the_window_starts_the_apply_at_the_right_local_time(tmp_path):
    clock, runner = FakeClock(berlin(2025, 3, 29, 12)), FakeRunner()
    record(tmp_path, berlin(2025, 3, 23, 3))
    sched = scheduler(tmp_path, clock, runner)
    seen = run_until(sched, clock, berlin(2025, 4, 1))
    [(at, event)] = started(seen)
    assert at == berlin(2025, 3, 30, 3).astimezone(UTC)  # 03:00 CEST, the clocks went forward
    assert event.unit == "steward-patch-20250330-030000.service"
    [argv] = runner.started
    assert argv == [
        "systemd-run", "--unit=steward-patch-20250330-030000",
        "--description=steward: dnf patching (window Sun 2025-03-30 03:00 CEST)",
        "--property=Type=oneshot", "--property=TimeoutStartSec=120min", "--collect",
        "--no-block", f"--setenv={pw.WINDOW_END_ENV}=2025-03-30T03:00:00+00:00", "--",
        "/usr/bin/steward", "patch", "apply"]
    state = json.loads((tmp_path / "patch" / "last-window.json").read_text())
    assert state["window"] == "2025-03-30T01:00:00+00:00" and state["outcome"] == "started"


def test_the_next_window_is_reckoned_from_the_clock(tmp_path):
    clock, runner = FakeClock(berlin(2025, 3, 28, 12)), FakeRunner()
    record(tmp_path, berlin(2025, 3, 23, 3))
    sched = scheduler(tmp_path, clock, runner)
    assert sched.tick() == [] and not runner.started
    assert sched.status()["next_start"] == "2025-03-30T01:00:00+00:00"  # Sun 03:00 CEST
    clock.at = berlin(2025, 3, 30, 3, 1)  # the clock moved into the window: it starts
    assert [e.kind for e in sched.tick()] == ["started"] and len(runner.started) == 1
    assert sched.status()["next_start"] == "2025-04-06T01:00:00+00:00"  # a week on
    later = scheduler(tmp_path, FakeClock(berlin(2025, 4, 7, 12)), FakeRunner())
    assert [e.kind for e in later.tick()] == ["missed"]  # the 6th passed without steward
    assert later.status()["next_start"] == "2025-04-13T01:00:00+00:00"


def test_the_random_delay_postpones_the_start_within_its_bound(tmp_path):
    clock = FakeClock(berlin(2025, 6, 7, 12))
    record(tmp_path, berlin(2025, 6, 1, 3))
    sched = scheduler(tmp_path, clock, rng=1.0, random_delay=45)
    [(at, _)] = started(run_until(sched, clock, berlin(2025, 6, 9)))
    assert at == berlin(2025, 6, 8, 3, 45).astimezone(UTC)


def test_daily_window_across_both_dst_changes_opens_once_a_day(tmp_path):
    # 02:30 does not exist on 30 Mar (read as 03:30 CEST) and happens twice on 26 Oct (once)
    clock = FakeClock(berlin(2025, 3, 28, 12))
    record(tmp_path, berlin(2025, 3, 28, 2, 30))
    sched = scheduler(tmp_path, clock, schedule="daily 02:30", duration=30, random_delay=0)
    spring = [at.astimezone(BERLIN).isoformat() for at, _ in
              started(run_until(sched, clock, berlin(2025, 4, 1)))]
    assert spring == ["2025-03-29T02:30:00+01:00", "2025-03-30T03:30:00+02:00",
                      "2025-03-31T02:30:00+02:00"]
    clock.at = berlin(2025, 10, 24, 12)
    record(tmp_path, berlin(2025, 10, 24, 2, 30))
    sched = scheduler(tmp_path, clock, schedule="daily 02:30", duration=30, random_delay=0)
    autumn = [at.astimezone(UTC) for at, _ in
              started(run_until(sched, clock, berlin(2025, 10, 28)))]
    assert autumn == [utc(2025, 10, 25, 0, 30), utc(2025, 10, 26, 0, 30),  # 02:30 CEST
                      utc(2025, 10, 27, 1, 30)]  # not also 02:30 CET on the 26th


# -- missed windows ---------------------------------------------------------------------

def test_a_window_missed_while_down_is_caught_up_at_the_next_start_with_catch_up(tmp_path):
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock, runner = FakeClock(berlin(2025, 3, 31, 9, 12)), FakeRunner()
    sched = scheduler(tmp_path, clock, runner, catch_up=True)
    events = sched.tick()
    assert [e.kind for e in events] == ["catch-up", "started"]
    assert events[0].window == berlin(2025, 3, 30, 3) and not events[0].alert
    assert "catch-up of the window Sun 2025-03-30 03:00 CEST" in runner.started[0][2]
    assert sched.status()["next_start"] == "2025-04-06T01:00:00+00:00"  # then regular again


def test_a_missed_window_without_catch_up_is_recorded_and_reported_not_run(tmp_path):
    record(tmp_path, berlin(2025, 3, 16, 3))
    clock, runner = FakeClock(berlin(2025, 3, 31, 9)), FakeRunner()
    sched = scheduler(tmp_path, clock, runner)
    [event] = sched.tick()
    assert event.kind == "missed" and event.alert and "2 windows" in event.summary
    assert "catch_up is off" in event.detail and not runner.started
    assert pw.WindowState(tmp_path).read()["outcome"] == "missed"
    assert not scheduler(tmp_path, clock, runner).tick()  # reported once, not at each start


def test_catch_up_is_not_worth_it_when_the_next_window_opens_soon():
    last, now = berlin(2025, 6, 1, 3), berlin(2025, 6, 3, 2)
    missed = pw.missed_window("daily 03:00", last, now, duration=120, catch_up=True, tz=BERLIN)
    assert missed is not None and missed.window == berlin(2025, 6, 2, 3)
    assert not missed.run and "next window opens at Tue 2025-06-03 03:00 CEST" in missed.reason
    later = pw.missed_window("daily 03:00", last, berlin(2025, 6, 2, 12), duration=120,
                          catch_up=True, tz=BERLIN)
    assert later is not None and later.run and later.count == 1


def test_an_open_window_is_not_missed_and_runs_after_a_restart_inside_it(tmp_path):
    assert pw.missed_window("Sun 03:00", berlin(2025, 3, 23, 3), berlin(2025, 3, 30, 4),
                         duration=120, catch_up=False, tz=BERLIN) is None
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock = FakeClock(berlin(2025, 3, 30, 4))
    assert [e.kind for e in scheduler(tmp_path, clock).tick()] == ["started"]
    # steward restarts again in the same window: the start is on record, no second one
    assert not scheduler(tmp_path, clock).tick()


def test_without_a_record_past_windows_are_not_caught_up(tmp_path):
    clock, runner = FakeClock(berlin(2025, 3, 30, 4)), FakeRunner()  # inside a window
    assert not scheduler(tmp_path, clock, runner, catch_up=True).tick()
    assert not runner.started and pw.WindowState(tmp_path).read()["outcome"] == "baseline"
    assert pw.missed_window("Sun 03:00", None, clock.at, duration=120, catch_up=True) is None


def test_a_corrupt_state_file_is_kept_aside_and_counts_as_a_fresh_start(tmp_path):
    (tmp_path / "patch").mkdir()
    (tmp_path / "patch" / "last-window.json").write_text("{not json")
    clock = FakeClock(berlin(2025, 3, 31, 9))
    assert not scheduler(tmp_path, clock, catch_up=True).tick()
    assert len(list((tmp_path / "patch").glob("last-window.json.corrupt-*"))) == 1


def test_due_window_counts_the_windows_since_the_last_record():
    latest, count = pw.due_window("daily 02:30", berlin(2025, 6, 1, 2, 30), berlin(2025, 6, 30),
                               BERLIN)
    assert latest == berlin(2025, 6, 29, 2, 30) and count == 28


# -- one apply at a time ----------------------------------------------------------------

def test_start_is_refused_while_a_patch_unit_is_still_active():
    runner = FakeRunner()
    runner.active = ACTIVE
    with pytest.raises(pw.PatchBusy, match=r"steward-patch-20250330-030000\.service"):
        pw.start_transient("steward-patch-x", ["/bin/true"], runner)
    assert not runner.started
    with pytest.raises(ValueError, match="steward-patch-"):
        pw.start_transient("dnf-upgrade", ["/bin/true"], runner)


def test_no_second_start_while_one_runs_then_the_window_gives_up(tmp_path):
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock, runner = FakeClock(berlin(2025, 3, 30, 1)), FakeRunner()
    runner.active = ACTIVE  # e.g. the timer's steward-patch.service, or last week's hung one
    seen = run_until(scheduler(tmp_path, clock, runner), clock, berlin(2025, 3, 30, 6))
    kinds = [(at.astimezone(BERLIN).strftime("%H:%M"), e.kind) for at, e in seen]
    assert kinds == [(f"{h:02d}:{m:02d}", "retry") for h, m in
                     [(3, 0), (3, 10), (3, 20), (3, 30), (3, 40), (3, 50), (4, 0), (4, 10),
                      (4, 20), (4, 30), (4, 40)]] + [("04:50", "gave-up")]
    assert not runner.started and seen[-1][1].alert
    assert "still active" in seen[-1][1].detail


def test_a_failed_systemd_run_is_retried_within_the_window(tmp_path):
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock, runner = FakeClock(berlin(2025, 3, 30, 1)), FakeRunner()
    runner.fail = 2
    seen = run_until(scheduler(tmp_path, clock, runner, retry_interval=15), clock,
                     berlin(2025, 3, 30, 6))
    assert [(at.astimezone(BERLIN).strftime("%H:%M"), e.kind) for at, e in seen] == [
        ("03:00", "retry"), ("03:15", "retry"), ("03:30", "started")]
    assert "busy bus" in seen[0][1].detail


def test_a_window_slept_through_is_missed_or_caught_up(tmp_path):
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock = FakeClock(berlin(2025, 3, 30, 1))
    sched = scheduler(tmp_path, clock, catch_up=False)
    assert not sched.tick()
    clock.at = berlin(2025, 3, 30, 9)  # suspended from 01:00 to 09:00
    assert [e.kind for e in sched.tick()] == ["missed"]
    record(tmp_path, berlin(2025, 3, 23, 3))
    clock.at = berlin(2025, 3, 30, 1)
    sched = scheduler(tmp_path, clock, catch_up=True)
    sched.tick()
    clock.at = berlin(2025, 3, 30, 9)
    assert [e.kind for e in sched.tick()] == ["catch-up", "started"]


def test_without_a_schedule_there_is_no_window(tmp_path):
    sched = pw.PatchScheduler(build(PatchOptions, {}, "<test>", "patch"), tmp_path, FakeRunner())
    assert sched.tick() == [] and sched.status() == {"schedule": None}
    assert not (tmp_path / "patch").exists()


# -- the shipped units, checked by systemd itself ----------------------------------------

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_analyze
def test_systemd_analyze_verify_accepts_the_patch_units(tmp_path):
    stub = tmp_path / "steward"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)  # verify wants ExecStart's program to exist
    for name in ("steward-patch.service", "steward-patch.timer"):
        text = (REPO / "units" / name).read_text()
        (tmp_path / name).write_text(text.replace("/usr/bin/steward", str(stub)))
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "steward-patch.timer"),
                           str(tmp_path / "steward-patch.service")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    service = (REPO / "units" / "steward-patch.service").read_text()
    for line in ("Type=oneshot", "ExecStart=/usr/bin/steward patch apply", "TimeoutStartSec=2h"):
        assert f"\n{line}\n" in service
    assert "\nRestart=" not in service


def systemd_calendar(specs, base: datetime, n: int) -> list[datetime]:
    """The next ``n`` elapses after ``base`` as systemd computes them, in Berlin."""
    proc = subprocess.run(["systemd-analyze", "calendar", f"--iterations={n}",
                           f"--base-time=@{int(base.timestamp())}", *specs],
                          capture_output=True, text=True, timeout=30, check=True,
                          env={**os.environ, "TZ": "Europe/Berlin", "LC_ALL": "C"})
    found = re.findall(r"\(in UTC\): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", proc.stdout)
    return sorted(datetime.fromisoformat(t).replace(tzinfo=UTC) for t in found)[:n]


def ours(schedule, base: datetime, n: int) -> list[datetime]:
    out = [pw.next_window(schedule, base, BERLIN)]
    while len(out) < n:
        out.append(pw.next_window(schedule, out[-1], BERLIN))
    return [t.astimezone(UTC) for t in out]


@needs_analyze
def test_the_timer_and_next_window_agree_on_the_sunday_window():
    timer = (REPO / "units" / "steward-patch.timer").read_text()
    assert "\nRandomizedDelaySec=30min\n" in timer and "\nPersistent=true\n" in timer
    [spec] = re.findall(r"^OnCalendar=(.*)$", timer, re.M)
    assert parse_schedule("Sun 03:00").oncalendar() == (spec,)
    base = berlin(2025, 3, 1, 12)  # through both DST changes
    assert systemd_calendar([spec], base, 40) == ours("Sun 03:00", base, 40)


@needs_analyze
@pytest.mark.parametrize("schedule", ["daily 04:30", "Mon,Thu 04:15", "Fri-Mon 01:00",
                                      "1st Sun 03:00", "last Sat 22:00", "last Sun 03:00",
                                      "1st Sun,3rd Sun 03:00", "2nd Tue,4th Tue 23:45"])
def test_systemd_calendar_agrees_with_next_window(schedule):
    base = berlin(2025, 1, 5, 12)
    theirs = systemd_calendar(parse_schedule(schedule).oncalendar(), base, 30)
    assert theirs == ours(schedule, base, 30)


@needs_analyze
def test_a_time_the_clocks_skip_is_late_here_where_systemd_skips_the_day():
    base = berlin(2025, 3, 27, 12)
    theirs = systemd_calendar(parse_schedule("daily 02:30").oncalendar(), base, 5)
    assert ours("daily 02:30", base, 6) == sorted([*theirs, utc(2025, 3, 30, 1, 30)])
    autumn = berlin(2025, 10, 23, 12)  # the repeated 02:30: both open one window
    assert systemd_calendar(["*-*-* 02:30:00"], autumn, 6) == ours("daily 02:30", autumn, 6)
