"""``steward run`` with no service list, in a container booted with systemd, on Debian's postfix:
``postfix.service`` is an "active (exited)" wrapper and the daemon runs in ``postfix@-.service``
(PartOf= the wrapper). steward must watch and restart the unit that runs the daemon, report it
as ``service:postfix``, and restart a daemon that hangs (SIGSTOP) while its unit stays active."""

from __future__ import annotations

import re
import time

import pytest

from tests.integration.boxed import install
from tests.integration.nspawn import Container, build_rootfs, nspawn_available
from tests.integration.test_supervisor_nspawn import journal, show, status, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

# Discovery finds postfix; only the SMTP probe's rhythm is made short for the hung case.
CONFIG = "[checks.smtp]\ninterval = 5\nconnect_timeout = 2\n[restart]\nbudget = 5\n"
DAEMON = "postfix@-.service"


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs()) as c:
        install(c)
        c.write_file("/etc/steward/steward.toml", CONFIG, mode=0o600)
        c.run(["systemctl", "stop", "monit"], timeout=30)  # in the rootfs; not wanted here
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "steward"], timeout=60)
        wait_for("postfix watched and OK", lambda: status(c)["checks"].get(
            "service:postfix", {}).get("status") == "OK", timeout=60)
        yield c


def master(box):
    out = box.run(["cat", "/var/spool/postfix/pid/master.pid"], check=False).stdout.strip()
    pid = int(out) if out.isdigit() else 0
    alive = pid and box.run(["test", "-d", f"/proc/{pid}"], check=False).returncode == 0
    return pid if alive else 0


def states(box, seen, old):
    """Record each ActiveState of the daemon's unit; true once it is active with a new master."""
    now = show(box, DAEMON, "ActiveState")["ActiveState"]
    if not seen or seen[-1] != now:
        seen.append(now)
    pid = master(box)
    return now == "active" and pid not in (0, old)


def test_the_wrapper_is_reported_by_its_name_and_the_daemon_unit_is_watched(box):
    assert show(box, "postfix.service", "ActiveState", "SubState") == {
        "ActiveState": "active", "SubState": "exited"}
    st = status(box)["checks"]["service:postfix"]
    assert st["unit"] == "postfix@-"
    assert st["summary"].endswith(f"in {DAEMON}")


def test_killed_master_of_a_wrapped_postfix_is_restarted_twice_in_a_row(box):
    for kill in (1, 2):  # the second kill 5 s after the first recovery: no backoff
        old = wait_for("postfix master", lambda: master(box))
        box.run(["python3", "-c", f"import os; os.kill({old}, 9)"])
        killed, seen = time.monotonic(), []
        wait_for(f"{DAEMON} back after kill {kill}",
                 lambda seen=seen, old=old: states(box, seen, old), timeout=10, step=0.05)
        assert seen[-1] == "active"
        # systemd's own clock of when the unit became active again (the container shares the
        # host's CLOCK_MONOTONIC), not when this test's polling through nspawn noticed it
        entered = show(box, DAEMON, "ActiveEnterTimestampMonotonic")
        back = int(entered["ActiveEnterTimestampMonotonic"]) / 1e6 - killed
        assert back <= 2.0, f"{DAEMON} back only after {back:.2f} s (kill {kill}): {seen}"
        log = wait_for("the restart logged", lambda kill=kill: (t := journal(box)).count(
            f"steward ran: systemctl restart {DAEMON}") == kill and t, timeout=10)
        # the service check (D-Bus signal) or the SMTP probe (refused) may see it first: either
        # way the unit running the daemon is restarted, once per kill
        assert re.search(rf"restart CRIT (service:postfix|smtp:localhost:25): steward ran: "
                         rf"systemctl restart {re.escape(DAEMON)} \({kill} of 5 within 15 min\)",
                         log), log[-2000:]
        assert "systemctl restart postfix.service" not in log
        time.sleep(5)
    assert status(box)["units"]["postfix@-"]["restarts"] == 2


def test_a_daemon_stopped_with_sigstop_while_its_unit_is_active_is_restarted(box):
    old = wait_for("postfix master", lambda: master(box))
    box.run(["systemctl", "kill", "-s", "STOP", DAEMON])
    assert show(box, DAEMON, "ActiveState")["ActiveState"] == "active"
    seen = []
    wait_for(f"{DAEMON} restarted", lambda: states(box, seen, old), timeout=30, step=0.1)
    log = journal(box)
    # (the problem alert itself may fall in the notifier's cooldown after the kills above)
    assert f"restart CRIT smtp:localhost:25: steward ran: systemctl restart {DAEMON}" in log
