"""``steward run`` as the appliance runs it: started by systemd from units/steward.service in a
container booted with systemd, watching real units (Debian's postfix among them)."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.integration.boxed import install
from tests.integration.nspawn import Container, build_rootfs, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

# A TCP service that stays active but stops answering on its port when /run/stw-hang exists.
WEB = """
import os, socket, time
try:
    os.unlink("/run/stw-hang")
except FileNotFoundError:
    pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8081))
s.listen(16)
s.settimeout(0.2)
while True:
    if os.path.exists("/run/stw-hang"):
        s.close()
        while True:
            time.sleep(3600)
    try:
        s.accept()[0].close()
    except socket.timeout:
        pass
"""

UNITS = {
    "stw-web.service": "[Service]\nExecStart=/usr/bin/python3 /opt/stw-web.py\n"
                       "[Install]\nWantedBy=multi-user.target\n",
    "stw-crashy.service": "[Service]\nExecStart=/bin/false\n",
    # systemd restarts it itself until its start limit; then it is steward's.
    "stw-limited.service": "[Unit]\nStartLimitIntervalSec=600\nStartLimitBurst=3\n"
                           "[Service]\nExecStart=/bin/false\nRestart=always\n"
                           "RestartSec=200ms\n",
    "steward.service.d/test.conf": "[Service]\nWatchdogSec=4s\nRestartSec=1s\n",
}
CONFIG = """
[checks.service]
units = ["postfix@-", "stw-web", "stw-crashy", "stw-limited"]
[checks.port]
targets = ["127.0.0.1:8081"]
units = { "127.0.0.1:8081" = "stw-web" }
interval = 1
[restart]
budget = 3
backoff = 1
grace = 2
"""


def wait_for(what, predicate, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs(), units=UNITS, enable=["stw-web.service"]) as c:
        install(c)
        c.write_file("/opt/stw-web.py", WEB)
        c.write_file("/etc/steward/steward.toml", CONFIG, mode=0o600)
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "stw-web", "steward"], timeout=60)
        yield c


def show(box, unit, *props):
    out = box.run(["systemctl", "show", "-p", ",".join(props), unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(box, unit="steward.service"):
    return box.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"]).stdout


def wait_journal(box, text, timeout=30.0):
    """steward's journal once it contains ``text``."""
    def found():
        log = journal(box)
        return log if text in log else None

    return wait_for(repr(text), found, timeout)


def kill(box, pid, sig="KILL"):
    """kill(1) is not in a minbase system; python3 is."""
    box.run(["python3", "-c", f"import os, signal; os.kill({int(pid)}, signal.SIG{sig})"])


def status(box):
    out = box.run(["steward", "status", "--json"], check=False).stdout
    return json.loads(out)


def test_daemon_is_ready_watches_by_dbus_and_reports_status(box):
    props = show(box, "steward", "ActiveState", "StatusText", "NRestarts", "Type")
    assert props["ActiveState"] == "active" and props["Type"] == "notify"
    st = wait_for("the first status", lambda: status(box) if status(box)["checks"] else None)
    assert st["running"] is True
    assert st["watch"] == "D-Bus signals"
    assert {"service:postfix@-", "service:stw-web", "port:127.0.0.1:8081"} <= set(st["checks"])
    assert re.match(r"\d+ checks, \d+ OK", show(box, "steward", "StatusText")["StatusText"])
    text = box.run(["steward", "status"]).stdout
    assert "unit changes seen by D-Bus signals" in text


def _master_pid(box):
    out = box.run(["cat", "/var/spool/postfix/pid/master.pid"], check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def test_killed_postfix_master_is_restarted_recorded_and_alerted(box):
    wait_for("postfix watched and OK", lambda: status(box)["checks"].get(
        "service:postfix@-", {}).get("status") == "OK")
    old = wait_for("postfix master", lambda: _master_pid(box))
    t0 = time.monotonic()
    kill(box, old)
    wait_for("the old master gone", lambda: box.run(["test", "-d", f"/proc/{old}"],
                                                    check=False).returncode != 0, timeout=5)
    wait_for("a new postfix master", lambda: (p := _master_pid(box)) and p != old and
             box.run(["test", "-d", f"/proc/{p}"], check=False).returncode == 0)
    took = time.monotonic() - t0
    assert took < 10, f"postfix back after {took:.1f} s"
    log = wait_journal(box, "recovery OK service:postfix@-")
    assert re.search(r"ALERT \S+ problem CRIT service:postfix@-: ", log)
    assert "ALERT" in log and "restart CRIT service:postfix@-: steward ran: systemctl " \
        "restart postfix@-.service (1 of 3 within 15 min)" in log
    assert status(box)["units"]["postfix@-"]["restarts"] == 1


def test_port_that_hangs_while_its_unit_stays_active_gets_the_unit_restarted(box):
    before = show(box, "stw-web", "MainPID")["MainPID"]
    box.run(["touch", "/run/stw-hang"])
    wait_for("stw-web restarted", lambda: show(box, "stw-web", "MainPID")["MainPID"]
             not in (before, "0"))
    log = wait_journal(box, "recovery OK port:127.0.0.1:8081")
    assert "problem CRIT port:127.0.0.1:8081: cannot connect" in log
    assert "stw-web: systemctl restart stw-web.service" in log


def test_maintenance_suppresses_restarts_and_alerts_until_switched_off(box):
    box.run(["steward", "maintenance", "on", "--for", "10m", "stw-web"])
    before = show(box, "stw-web", "MainPID")["MainPID"]
    alerts = journal(box).count("port:127.0.0.1:8081")
    box.run(["touch", "/run/stw-hang"])
    time.sleep(4)  # four port-check intervals, twice the grace
    assert show(box, "stw-web", "MainPID")["MainPID"] == before, "no restart in maintenance"
    assert journal(box).count("port:127.0.0.1:8081") == alerts, "no alert in maintenance"
    assert status(box)["checks"]["port:127.0.0.1:8081"]["maintenance"] is True
    box.run(["steward", "maintenance", "off"])
    wait_for("restart after maintenance", lambda: show(box, "stw-web", "MainPID")["MainPID"]
             != before, timeout=15)


def _restarts_of_crashy(box):
    return journal(box).count("stw-crashy: systemctl restart stw-crashy.service")


def test_unit_failing_on_every_start_gets_exactly_the_budget_then_escalation(box):
    log = wait_journal(box, "escalation CRIT service:stw-crashy: restart did not help")
    assert _restarts_of_crashy(box) == 3
    assert "steward reset stw-crashy" in log
    time.sleep(5)
    assert _restarts_of_crashy(box) == 3, "no restarts after giving up"
    unit = status(box)["units"]["stw-crashy"]
    assert unit["restarts"] == 3 and "did not help" in unit["escalated"]


def test_unit_that_hit_its_start_limit_is_reset_failed_and_started_and_that_is_said(box):
    box.run(["systemctl", "start", "stw-limited"], check=False)  # fails: /bin/false
    log = wait_journal(box, "stw-limited: systemctl reset-failed stw-limited.service (start "
                       "limit hit) && systemctl start stw-limited.service")
    assert "steward ran: systemctl reset-failed stw-limited.service (start limit hit)" in log
    assert "problem WARN service:stw-limited: systemd is restarting it" in log or \
        "problem CRIT service:stw-limited: failed (start-limit-hit)" in log


def test_sigkilled_steward_is_restarted_keeps_budgets_and_does_not_realert(box):
    pid = show(box, "steward", "MainPID")["MainPID"]
    problems = journal(box).count("problem CRIT service:stw-crashy")
    kill(box, pid)
    wait_for("steward back", lambda: (p := show(box, "steward", "MainPID", "ActiveState"))
             ["ActiveState"] == "active" and p["MainPID"] not in (pid, "0"))
    time.sleep(3)  # a few passes of the new instance
    st = status(box)
    assert st["pid"] != int(pid)
    assert st["units"]["stw-crashy"]["restarts"] == 3
    assert st["units"]["stw-crashy"]["escalated"]
    assert st["units"]["postfix@-"]["restarts"] == 1
    assert journal(box).count("problem CRIT service:stw-crashy") == problems
    assert _restarts_of_crashy(box) == 3


def test_reset_lets_steward_restart_the_unit_again(box):
    box.run(["steward", "reset", "stw-crashy"], timeout=20)
    # in the pass that takes the reset, not at the service check's next 30 s interval
    wait_for("a restart after reset", lambda: _restarts_of_crashy(box) > 3, timeout=10)


def test_bad_config_on_reload_is_rejected_and_the_old_one_keeps_running(box):
    pid = show(box, "steward", "MainPID")["MainPID"]
    box.write_file("/etc/steward/steward.toml", CONFIG + "\n[checks.port]\nwran = 1\n",
                   mode=0o600)
    box.run(["systemctl", "reload", "steward"])
    log = wait_journal(box, "config reload failed")
    assert "still running with the previous config" in log
    assert "ALERT" in log and "config: new config rejected" in log
    props = show(box, "steward", "MainPID", "ActiveState")
    assert props == {"MainPID": pid, "ActiveState": "active"}
    assert "port:127.0.0.1:8081" in status(box)["checks"]
    box.write_file("/etc/steward/steward.toml", CONFIG, mode=0o600)


def test_stalled_loop_is_killed_by_the_watchdog_and_restarted(box):
    pid = show(box, "steward", "MainPID")["MainPID"]
    kill(box, pid, "STOP")
    wait_for("watchdog restart", lambda: show(box, "steward", "MainPID")["MainPID"]
             not in (pid, "0"), timeout=30)
    assert "Watchdog timeout" in journal(box)
    wait_for("active again", lambda: show(box, "steward", "ActiveState")["ActiveState"]
             == "active")
