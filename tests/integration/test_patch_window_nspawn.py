"""The patch window's transient unit against a real systemd (PID 1 in a systemd-nspawn
container): the apply runs outside the cgroup of whoever started it, so restarting steward (as
a package upgrade does) cannot kill it, and a second start is refused while it runs."""

from __future__ import annotations

import json
import time

import pytest

import patch.window as pw

# -- a real systemd: the apply runs outside the cgroup of whoever started it --------------

STARTER = """
import json, sys, time
from datetime import datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo
sys.path.insert(0, "/opt/steward")
from patch.options import PatchOptions
from agent.config.schema import build
from agent.system.commands import CommandRunner
from patch.window import PatchScheduler, WindowState

state = WindowState(sys.argv[1])
week = datetime(2025, 3, 23, 3, tzinfo=ZoneInfo("Europe/Berlin"))
if state.last() is None:  # last week's window was handled
    state.record(week, "started", week)
opts = build(PatchOptions, {"schedule": "Sun 03:00", "random_delay": 0}, "<test>", "patch")
now = SimpleNamespace(now=lambda: week.timestamp() + 7 * 86400 - 3600)  # Sun 03:00 CEST
sched = PatchScheduler(opts, sys.argv[1], CommandRunner(), clock=now, tz=week.tzinfo,
                       argv=["/bin/sleep", "600"])
print(json.dumps([[e.kind, e.unit, e.detail] for e in sched.tick()]), flush=True)
if sys.argv[2:] == ["stay"]:
    time.sleep(3600)
"""
STEWARD_LIKE = "[Service]\nExecStart=/usr/bin/python3 /opt/stw-patch-start.py /var/lib/stw-a stay\n"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.root
def test_the_apply_unit_outlives_a_restart_of_the_service_that_started_it():
    from tests.integration.boxed import install
    from tests.integration.nspawn import Container, build_rootfs, nspawn_available

    if nspawn_available() is not None:
        pytest.skip(nspawn_available() or "")
    with Container(build_rootfs(), units={"stw-steward.service": STEWARD_LIKE}) as box:
        install(box)
        box.write_file("/opt/stw-patch-start.py", STARTER)

        def patch_units():
            out = box.run(["systemctl", "list-units", "--plain", "--no-legend",
                           "steward-patch-*"], check=False).stdout
            return [line.split()[:4] for line in out.splitlines() if line.strip()]

        def show(unit, *props):
            out = box.run(["systemctl", "show", "-p", ",".join(props), unit]).stdout
            return dict(line.split("=", 1) for line in out.splitlines())

        def journal():
            out = box.run(["journalctl", "-u", "stw-steward.service", "-o", "cat"]).stdout
            return [line for line in out.splitlines() if line.startswith("[")]

        box.run(["systemctl", "start", "stw-steward.service"])
        wait_for(patch_units)
        [[unit, load, active, sub]] = patch_units()
        assert unit == "steward-patch-20250330-030000.service", box.diagnostics()
        assert (load, active, sub) == ("loaded", "activating", "start")
        props = show(unit, "Type", "TimeoutStartUSec", "ControlGroup", "MainPID",
                     "Environment", "Description")
        assert props["Type"] == "oneshot" and props["TimeoutStartUSec"] == "2h"
        assert props["ControlGroup"] == f"/system.slice/{unit}"  # not stw-steward's
        assert props["Environment"] == f"{pw.WINDOW_END_ENV}=2025-03-30T03:00:00+00:00"
        assert props["Description"] == "steward: dnf patching (window Sun 2025-03-30 03:00 CEST)"

        box.run(["systemctl", "restart", "stw-steward.service"])  # as a package upgrade would
        wait_for(lambda: len(journal()) == 2)
        assert journal() == [f'[["started", "{unit}", ""]]', "[]"]  # restarted: no 2nd start
        assert show(unit, "MainPID", "ActiveState") == {"MainPID": props["MainPID"],
                                                        "ActiveState": "activating"}

        # a fresh state (another starter) is refused by the real list-units
        out = box.run(["python3", "/opt/stw-patch-start.py", "/var/lib/stw-b"]).stdout
        [[kind, _, detail]] = json.loads(out)
        assert kind == "retry" and f"still active: {unit}" in detail

        box.run(["systemctl", "stop", unit])
        assert patch_units() == []
        assert show(unit, "LoadState") == {"LoadState": "not-found"}  # --collect
