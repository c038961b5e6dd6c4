"""``[alerts]``: the notices policy's keys, which events reach which action (route), and the
keys that moved there from ``[notify.email]`` (still read; set in both: refused)."""

from __future__ import annotations

import pytest

from agent.config import from_tables
from agent.config.sections import Route
from agent.events import Event
from agent.model import Status
from agent.registry import discover
from tests.conftest import run_steward


@pytest.mark.parametrize(("table", "problem"), [
    ('[alerts]\nroute = { pager = { min_severity = "CRIT" } }',
     'entry "pager": no action "pager" is installed (installed: email, journal, restart, '
     "webhook)"),
    ('[alerts.route.email]\nmin_severity = "OK"', 'min_severity "OK" is not one of WARN, '
     "UNKNOWN, CRIT"),
    ('[alerts.route.webhook]\nkinds = ["problem", "tweet"]', 'kind "tweet" is not one of'),
    ('[alerts.route.email]\nseverity = "CRIT"', "not a table of min_severity, kinds, held"),
    ('[alerts.route.email]\nheld = "yes"', "held is not true or false"),
    ("[alerts]\naction_timeout = 0", "alerts.action_timeout = 0"),
    ('[alerts]\ndigest = "25:00"\n', 'alerts.digest = "25:00"'),
    ("[alerts]\ncooldown = 60\n[notify.email]\ncooldown = 120\n",
     "notify.email.cooldown: set in [alerts] too"),
])
def test_bad_alerts_config_is_refused_with_what_is_accepted(tmp_path, table, problem):
    conf = tmp_path / "steward.toml"
    conf.write_text(table + "\n")
    conf.chmod(0o600)
    done = run_steward("config", "check", "--config", str(conf))
    assert done.returncode == 2, done.stderr
    assert problem in done.stderr and "Traceback" not in done.stderr


def test_an_older_config_keeps_its_notify_email_cooldown_reminder_and_digest():
    checks = discover().checks
    old = from_tables({"notify": {"email": {"cooldown": 60, "reminder": 0,
                                            "digest": "07:30"}}}, "x", checks)
    assert (old.alerts.cooldown, old.alerts.reminder, old.alerts.digest) == (60, 0, "07:30")
    new = from_tables({"alerts": {"cooldown": 60, "reminder": 0, "digest": "07:30"}}, "x",
                      checks)
    assert new.alerts == old.alerts
    assert from_tables({}, "x", checks).alerts.cooldown == 900


def test_config_check_says_where_a_moved_key_is_read(tmp_path):
    conf = tmp_path / "steward.toml"
    conf.write_text('[notify.email]\ncooldown = 60\n')
    conf.chmod(0o600)
    done = run_steward("config", "check", "--config", str(conf))
    assert done.returncode == 0, done.stderr
    assert "[notify.email] cooldown is read as [alerts] cooldown" in done.stderr


def test_a_route_takes_kinds_and_severities_and_recoveries_follow_their_problem():
    crit = Route(Status.CRIT)
    assert not crit.takes(Event("problem", "disk:/", Status.WARN, "81%"))
    assert crit.takes(Event("problem", "disk:/", Status.CRIT, "99%"))
    assert crit.takes(Event("recovery", "disk:/", Status.OK, "ok", was=Status.CRIT))
    assert not crit.takes(Event("recovery", "disk:/", Status.OK, "ok", was=Status.WARN))
    assert crit.takes(Event("recovery", "disk:/", Status.OK, "ok"))  # not known: told
    assert crit.takes(Event("digest", "disk:/", Status.WARN, "81%")), "a digest lists all"
    held = Event("problem", "disk:/", Status.CRIT, "99%", held=True)
    assert not crit.takes(held) and Route(held=True).takes(held), "held back: only a log"
    only = Route(Status.WARN, frozenset({"digest"}))
    assert not only.takes(Event("problem", "disk:/", Status.CRIT, "99%"))
    assert only.takes(Event("digest", "disk:/", Status.WARN, "81%"))


def test_config_show_writes_the_routes_back_as_toml_that_loads_the_same(tmp_path):
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib

    conf = tmp_path / "steward.toml"
    conf.write_text('[alerts.route.email]\nmin_severity = "CRIT"\nkinds = ["problem", '
                    '"digest"]\n[alerts.route.journal]\nheld = false\n')
    conf.chmod(0o600)
    done = run_steward("config", "show", "--config", str(conf))
    assert done.returncode == 0, done.stderr
    shown = tomllib.loads(done.stdout)["alerts"]["route"]
    assert shown == {"email": {"min_severity": "CRIT", "kinds": ["digest", "problem"],
                               "held": False},
                     "journal": {"min_severity": "WARN", "held": False}}
