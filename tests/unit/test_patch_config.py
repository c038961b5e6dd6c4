"""[patch] options: defaults, the schedule grammar, and one clear error (key, value, accepted
values) for each kind of mistake."""

from __future__ import annotations

import dataclasses
import re

import pytest

from agent.calendar import ACCEPTED, ScheduleError, parse_schedule
from agent.config.schema import ConfigError, build, to_toml
from patch.options import PatchOptions


def patch(**table):
    return build(PatchOptions, table, "steward.toml", "patch")


def test_defaults_keep_no_window_and_patch_security_updates_only():
    o = patch()
    assert not o.enabled and o.schedule is None and o.parsed_schedule is None
    assert (o.random_delay, o.duration, o.retry_interval) == (30, 120, 10)
    assert (o.mode, o.reboot, o.exclude) == ("security", "when-needed", ())
    assert o.reboot_command == ("/usr/bin/systemctl", "reboot")
    assert not (o.catch_up or o.rollback_on_failure or o.pre_backup)


def test_a_full_table_is_read_into_frozen_options():
    o = patch(schedule="1st Sun 03:00", random_delay=0, duration=240, catch_up=True,
              mode="all", exclude=["kernel*", "httpd"], reboot="always-after-kernel",
              rollback_on_failure=True, pre_backup=True, retry_interval=15)
    assert o.enabled and o.schedule == "1st Sun 03:00"
    assert o.exclude == ("kernel*", "httpd") and o.duration == 240
    with pytest.raises(AttributeError):
        o.mode = "security"  # type: ignore[misc]


def test_every_option_renders_as_toml_for_config_show():
    o = patch(schedule="Mon,Thu 04:15", exclude=["kernel*"])
    for f in dataclasses.fields(o):
        if getattr(o, f.name) is not None:
            to_toml(getattr(o, f.name))


@pytest.mark.parametrize(("text", "weekdays", "nth", "hh_mm"), [
    ("Sun 03:00", (6,), (), (3, 0)),
    ("daily 02:30", (), (), (2, 30)),
    ("DAILY 2:30", (), (), (2, 30)),
    ("Mon,Thu 04:15", (0, 3), (), (4, 15)),
    ("Mon, Thu 04:15", (0, 3), (), (4, 15)),
    ("sunday 23:59", (6,), (), (23, 59)),
    ("Mon-Fri 01:00", (0, 1, 2, 3, 4), (), (1, 0)),
    ("Fri-Mon 01:00", (0, 4, 5, 6), (), (1, 0)),  # a range may wrap over the week's end
    ("Mon-Wed,Sat 00:00", (0, 1, 2, 5), (), (0, 0)),
    ("Mon-Sun 05:00", (), (), (5, 0)),  # every day is daily
    ("1st Sun 03:00", (), (("1st", 6),), (3, 0)),
    ("last Sat 22:00", (), (("last", 5),), (22, 0)),
    ("1st Sun,3rd Sun 03:00", (), (("1st", 6), ("3rd", 6)), (3, 0)),
])
def test_the_schedule_grammar(text, weekdays, nth, hh_mm):
    s = parse_schedule(text)
    assert (s.weekdays, s.nth, (s.hour, s.minute)) == (weekdays, nth, hh_mm)
    assert s.daily == (not weekdays and not nth)


def test_schedules_open_on_the_days_they_name():
    from datetime import date, timedelta

    from agent.calendar import matches

    def days(text, start=date(2025, 3, 1), n=62):
        s = parse_schedule(text)
        return [start + timedelta(i) for i in range(n) if matches(s, start + timedelta(i))]

    assert {d.weekday() for d in days("Mon,Thu 04:15")} == {0, 3}
    assert len(days("daily 02:30")) == 62
    # March 2025: Sundays 2, 9, .. 30; Saturdays 1, .. 29. April: Sun 6, Sat 26.
    assert days("1st Sun,last Sat 03:00") == [date(2025, 3, 2), date(2025, 3, 29),
                                              date(2025, 4, 6), date(2025, 4, 26)]
    assert days("4th Fri 22:00") == [date(2025, 3, 28), date(2025, 4, 25)]


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("03:00", "which days"),
    ("Sun", "not a time of day"),
    ("Sun 3am", "not a time of day"),
    ("Sun 24:00", "not a time of day"),
    ("Sun 03:60", "not a time of day"),
    ("Sonntag 03:00", '"Sonntag" is not a day'),
    ("Mon,,Thu 04:15", "empty item"),
    ("5th Sun 03:00", "neither a day"),
    ("1st Sun,Mon 03:00", "mixes plain days"),
    ("Mon-Xyz 01:00", '"Xyz" is not a day'),
])
def test_a_bad_schedule_is_a_value_error_listing_the_accepted_forms(text, reason):
    with pytest.raises(ValueError, match=re.escape(reason)) as e:
        parse_schedule(text)
    assert isinstance(e.value, ScheduleError)
    assert "daily HH:MM" in str(e.value) and "1st Sun 03:00" in str(e.value)


# (table, the documented error) — each names file, key, value and what is accepted
BAD = [
    ({"schedule": "Sun 3am"}, r'steward\.toml: patch\.schedule = "Sun 3am": "3am" is not a '
     r"time of day HH:MM .*\(accepted: \"daily HH:MM\"; \"DAYS HH:MM\""),
    ({"schedule": 3}, r"patch\.schedule = 3: not a string \(accepted: \"daily HH:MM\""),
    ({"random_delay": -1}, r"patch\.random_delay = -1: out of range \(accepted: a whole "
     r"number from 0 to 720\)"),
    ({"random_delay": 1.5}, r"patch\.random_delay = 1\.5: not a whole number"),
    ({"duration": 5}, r"patch\.duration = 5: out of range \(accepted: a whole number from 10 "
     r"to 1440\)"),
    ({"catch_up": "yes"}, r"patch\.catch_up = \"yes\": not true or false \(accepted: true or "
     r"false\)"),
    ({"mode": "bugfix"}, r"patch\.mode = \"bugfix\": not one of the choices \(accepted: "
     r"\"security\", \"all\"\)"),
    ({"reboot": "yes"}, r"patch\.reboot = \"yes\": not one of the choices \(accepted: \"never\", "
     r"\"when-needed\", \"always-after-kernel\"\)"),
    ({"exclude": "kernel*"}, r"patch\.exclude = \"kernel\*\": not a list"),
    ({"exclude": ["kernel*", "a b"]}, r"patch\.exclude = .*item 2 \(\"a b\"\): not a package "
     r"name or glob"),
    ({"exclude": ["-y"]}, r"item 1 \(\"-y\"\): starts with '-', which dnf would read as "
     r"an option"),
    ({"exclude": ["httpd,kernel"]}, r"not a package name or glob"),
    ({"rollback_on_failure": 1}, r"patch\.rollback_on_failure = 1: not true or false"),
    ({"pre_backup": "no"}, r"patch\.pre_backup = \"no\": not true or false"),
    ({"retry_interval": 0}, r"patch\.retry_interval = 0: out of range \(accepted: a number "
     r"from 0\.05 to 1440\)"),
    ({"reboot_command": ["systemctl", "reboot"]}, r"patch\.reboot_command = .*the program "
     r'"systemctl" is not an absolute path'),
    ({"scheduel": "Sun 03:00"}, r"patch\.scheduel: unknown key \(accepted: schedule, "
     r"random_delay, duration, catch_up, mode, exclude, reboot, rollback_on_failure, "
     r"pre_backup, retry_interval, reboot_command\)"),
    ({"random_delay": 120, "duration": 120}, r"steward\.toml: patch: random_delay \(120 min\) "
     r"must be shorter than duration \(120 min\)"),
]


@pytest.mark.parametrize(("table", "message"), BAD)
def test_each_bad_value_is_one_config_error_naming_key_value_and_accepted(table, message):
    with pytest.raises(ConfigError) as e:
        patch(**table)
    assert re.search(message, str(e.value)), str(e.value)


def test_the_schedule_error_from_build_lists_the_accepted_forms_once():
    with pytest.raises(ConfigError) as e:
        patch(schedule="Mon,Sonntag 03:00")
    assert e.value.key == "patch.schedule" and e.value.accepted == ACCEPTED
    assert str(e.value).count("daily HH:MM") == 1


def test_the_local_zone_is_tz_when_it_names_one_else_etc_localtime(monkeypatch):
    import time
    from datetime import datetime, timezone

    from agent.calendar import local_zone

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert str(local_zone()) == "Asia/Tokyo"
    monkeypatch.delenv("TZ")
    time.tzset()
    zone = local_zone()  # this machine's /etc/localtime, read as the C library reads it
    now = datetime.now(timezone.utc)
    assert now.astimezone(zone).utcoffset() == now.astimezone().utcoffset()
    monkeypatch.setenv("TZ", "EST+5")  # a POSIX TZ string, not a zone name: the file
    assert local_zone() == zone or str(local_zone()) == str(zone)
