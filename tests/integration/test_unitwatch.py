"""UnitWatcher against a real systemd + dbus-daemon in a systemd-nspawn container.

The container's /run is a tmpfs in nspawn's mount namespace, so its bus socket is not in
the overlay (``box.root``); the host reaches it through ``/proc/<PID 1>/root``."""

from __future__ import annotations

import threading
import time

import pytest

from agent.system.unitwatch import UnitWatcher
from tests.integration.nspawn import Container, build_rootfs, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

SLEEP = "[Unit]\nDescription={0}\n[Service]\nExecStart=/bin/sleep infinity\n" \
        "[Install]\nWantedBy=multi-user.target\n"
UNITS = {"stw-victim.service": SLEEP.format("gets SIGKILLed, no Restart="),
         "stw-toggle.service": SLEEP.format("started and stopped by a test")}


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs(), units=UNITS, enable=["stw-victim.service"]) as c:
        yield c


def bus_of(box):
    return f"unix:path=/proc/{box.pid}/root/run/dbus/system_bus_socket"


class Recorder:
    def __init__(self):
        self.events = []  # (monotonic time, unit, state)
        self.cond = threading.Condition()

    def __call__(self, unit, state):
        with self.cond:
            self.events.append((time.monotonic(), unit, state))
            self.cond.notify_all()

    def wait_for(self, unit, state, since, timeout=5.0):
        """Time of the first (unit, state) event at or after *since*, or fail."""
        with self.cond:
            found = self.cond.wait_for(
                lambda: [t for t, u, s in self.events if t >= since and (u, s) == (unit, state)],
                timeout)
        assert found, f"no {unit} -> {state} within {timeout} s; saw {self.events}"
        return found[0]


@pytest.fixture
def watched(box):
    rec = Recorder()
    w = UnitWatcher(rec, bus_address=bus_of(box))
    w.start()
    deadline = time.monotonic() + 10
    while not w.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.connected, w.error
    yield w, rec
    w.stop()


def test_sigkilled_unit_is_reported_failed_within_2s(box, watched):
    _, rec = watched
    assert box.run(["systemctl", "is-active", "stw-victim"], check=False).stdout.strip() \
        == "active"
    started = time.monotonic()  # before nsenter: includes its fork/exec
    box.run(["systemctl", "kill", "-s", "KILL", "stw-victim"])
    latency = rec.wait_for("stw-victim.service", "failed", started) - started
    print(f"SIGKILL -> 'failed' seen after {latency * 1000:.1f} ms")
    assert latency < 2.0
    box.run(["systemctl", "reset-failed", "stw-victim"])


def test_start_and_stop_transitions_are_seen(box, watched):
    _, rec = watched
    started = time.monotonic()
    box.run(["systemctl", "start", "stw-toggle"])
    up = rec.wait_for("stw-toggle.service", "active", started)
    box.run(["systemctl", "stop", "stw-toggle"])
    rec.wait_for("stw-toggle.service", "inactive", up)


def test_stop_ends_the_thread_promptly(box):
    w = UnitWatcher(lambda u, s: None, bus_address=bus_of(box))
    w.start()
    deadline = time.monotonic() + 10
    while not w.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.connected, w.error
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name == "unitwatch"]


def test_missing_socket_reports_disconnected_without_raising(box):
    w = UnitWatcher(lambda u, s: None,
                    bus_address=f"unix:path=/proc/{box.pid}/root/run/dbus/no_such_socket")
    w.start()
    deadline = time.monotonic() + 5
    while not w.error and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    assert w.connected is False
    assert "FileNotFoundError" in w.error


def test_reconnects_after_the_bus_restarts(box, watched):
    w, rec = watched
    box.run(["systemctl", "restart", "dbus"])
    deadline = time.monotonic() + 5
    while w.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not w.connected and "lost connection" in w.error
    deadline = time.monotonic() + 10
    while not w.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.connected, w.error
    started = time.monotonic()
    box.run(["systemctl", "start", "stw-toggle"])
    rec.wait_for("stw-toggle.service", "active", started)
