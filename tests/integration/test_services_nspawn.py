"""The service check against a real systemd (PID 1 in a systemd-nspawn container)."""

from __future__ import annotations

import json
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.system.commands import CommandRunner
from agent.system.systemd import Systemd
from checks.services import ServiceCheck, ServiceOptions, discover
from tests.integration.boxed import install
from tests.integration.nspawn import Container, build_rootfs, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

SLEEP = "[Unit]\nDescription={0}\n[Service]\nExecStart=/bin/sleep infinity\n" \
        "[Install]\nWantedBy=multi-user.target\n"
UNITS = {
    "stw-ok.service": SLEEP.format("runs"),
    "stw-victim.service": SLEEP.format("gets killed by a test"),
    "stw-stopped.service": SLEEP.format("enabled, stopped after boot"),
    "stw-manual.service": SLEEP.format("started by hand, not enabled"),
    "stw-fail.service": "[Service]\nExecStart=/bin/false\n"
                        "[Install]\nWantedBy=multi-user.target\n",
    "stw-flap.service": "[Service]\nExecStart=/bin/false\nRestart=always\nRestartSec=300\n"
                        "[Install]\nWantedBy=multi-user.target\n",
}
ENABLED = ["stw-ok.service", "stw-victim.service", "stw-stopped.service", "stw-fail.service",
           "stw-flap.service"]


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs(), units=UNITS, enable=ENABLED) as c:
        c.run(["systemctl", "stop", "stw-stopped"])
        c.run(["systemctl", "start", "stw-manual"])
        # A packaged unit (in /usr/lib) masked by the administrator.
        c.run(["systemctl", "mask", "systemd-networkd.service"])
        yield c


@pytest.fixture(scope="module")
def env(box):
    runner = CommandRunner()
    return Env(Config("<test>"), commands=runner, systemd=Systemd(runner, box.systemctl_argv))


def judge(env, *units, missing="crit"):
    check = ServiceCheck(ServiceOptions(units=units, missing=missing))
    return {r.check: r for r in check.run(env)}


def test_running_unit_is_ok(env):
    r = judge(env, "stw-ok")["service:stw-ok"]
    assert r.status is Status.OK
    assert r.summary == "active (running)"


def test_failed_unit_is_critical_with_its_result_and_a_remedy(env):
    r = judge(env, "stw-fail")["service:stw-fail"]
    assert r.status is Status.CRIT
    assert r.summary == "failed (exit-code)"
    assert "journalctl -u stw-fail.service" in r.remedy


def test_stopped_but_enabled_unit_is_critical(env):
    r = judge(env, "stw-stopped")["service:stw-stopped"]
    assert r.status is Status.CRIT
    assert r.summary.startswith("enabled but not running (inactive/dead)")
    assert r.remedy == "systemctl enable --now stw-stopped.service"


def test_auto_restarting_unit_is_a_warning_systemd_has_in_hand(env):
    r = judge(env, "stw-flap")["service:stw-flap"]
    assert r.status is Status.WARN
    assert "systemd is restarting it" in r.summary


def test_running_but_disabled_unit_warns_it_will_not_survive_a_reboot(env):
    r = judge(env, "stw-manual")["service:stw-manual"]
    assert r.status is Status.WARN
    assert "will not start at boot" in r.summary
    assert r.remedy == "systemctl enable stw-manual.service"


def test_masked_unit_is_critical(env):
    r = judge(env, "systemd-networkd")["service:systemd-networkd"]
    assert r.status is Status.CRIT
    assert "masked" in r.summary and "unmask" in r.remedy


def test_unknown_unit_is_reported_clearly_or_skipped_per_config(env):
    r = judge(env, "no-such-daemon")["service:no-such-daemon"]
    assert r.status is Status.CRIT
    assert r.summary == "unit no-such-daemon.service not found"
    assert "install the package" in r.remedy
    assert judge(env, "no-such-daemon", "stw-ok", missing="skip").keys() == {"service:stw-ok"}
    warn = judge(env, "no-such-daemon", missing="warn")["service:no-such-daemon"]
    assert warn.status is Status.WARN


def test_many_units_are_read_in_one_systemctl_call(env, box):
    calls = []

    class Counting(CommandRunner):
        def run(self, argv, **kw):
            calls.append(argv)
            return super().run(argv, **kw)

    runner = Counting()
    counted = Env(env.config, commands=runner, systemd=Systemd(runner, box.systemctl_argv))
    results = judge(counted, *[u.removesuffix(".service") for u in UNITS], "postfix", "nosuch")
    assert len(results) == len(UNITS) + 2
    # One call for all; one more for what Debian's postfix.service (a wrapper) runs in.
    assert len(calls) == 2 and calls[1][-1] == "postfix@-.service"


def test_a_killed_unit_turns_critical(env, box):
    assert judge(env, "stw-victim")["service:stw-victim"].status is Status.OK
    box.run(["systemctl", "kill", "-s", "KILL", "stw-victim"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = judge(env, "stw-victim")["service:stw-victim"]
        if r.status is not Status.OK:
            break
        time.sleep(0.1)
    assert r.status is Status.CRIT
    assert r.summary == "failed (signal)"


def test_default_config_discovers_the_appliance_services_present(env):
    found = discover(env)
    assert "postfix" in found, "Debian's postfix.service is installed and enabled"
    assert "httpd" not in found and "dovecot" not in found


@pytest.fixture(scope="module")
def installed(box):
    return install(box)


def steward_inside(box, installed, *args):
    return box.run(["env", f"PYTHONPATH={installed}", "python3", "-m", "agent", *args],
                   check=False, timeout=60)


def test_steward_check_runs_inside_a_systemd_machine_with_the_default_config(box, installed):
    proc = steward_inside(box, installed, "check", "--format", "json")
    assert "Traceback" not in proc.stderr, proc.stderr
    doc = json.loads(proc.stdout)
    got = {r["check"]: r for r in doc["results"]}
    assert got["service:postfix"]["status"] == "OK"
    assert got["port:localhost:25"]["status"] == "OK", "postfix listens on 25 in there"
    ntp = box.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"]).stdout.strip()
    assert (got["timesync"]["status"] == "OK") == (ntp == "yes"), "agrees with timedated"
    assert proc.returncode == doc["exit_code"]


def test_steward_check_exit_code_is_the_worst_unit(box, installed):
    box.write_file("/etc/steward/steward.toml",
                   '[checks.service]\nunits = ["stw-ok", "stw-flap"]\n', mode=0o600)
    proc = steward_inside(box, installed, "check", "--only", "service", "--format", "nagios")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("STEWARD WARNING - 1 warning of 2: service:stw-flap")
    box.write_file("/etc/steward/steward.toml",
                   '[checks.service]\nunits = ["stw-ok", "stw-fail"]\n', mode=0o600)
    proc = steward_inside(box, installed, "check", "--only", "service")
    assert proc.returncode == 2
    assert proc.stdout.startswith("CRIT    service:stw-fail")
