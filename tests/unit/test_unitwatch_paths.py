"""UnitWatcher without systemd: path unescaping, signal dispatch, an unreachable bus."""

from __future__ import annotations

import logging
import time

import pytest

from agent.system.unitwatch import UnitWatcher, unescape_unit_path


@pytest.mark.parametrize(("path", "unit"), [
    ("/org/freedesktop/systemd1/unit/postfix_2eservice", "postfix.service"),
    ("/org/freedesktop/systemd1/unit/postfix_40_2d_2eservice", "postfix@-.service"),
    ("/org/freedesktop/systemd1/unit/stw_2dvictim_2eservice", "stw-victim.service"),
    ("/org/freedesktop/systemd1/unit/_2d_2eslice", "-.slice"),
    ("/org/freedesktop/systemd1/unit/dev_2dsda1_2edevice", "dev-sda1.device"),
    ("/org/freedesktop/systemd1/unit/_31_2dfoo_2eservice", "1-foo.service"),  # leading digit
    ("/org/freedesktop/systemd1/unit/caf_c3_a9_2eservice", "caf\u00e9.service"),  # UTF-8
    ("/org/freedesktop/systemd1/unit/a_5f_2eservice", "a_.service"),
    ("/org/freedesktop/systemd1/unit/_", ""),
    ("postfix_2Eservice", "postfix.service"),
])
def test_unescape_unit_path(path, unit):
    assert unescape_unit_path(path) == unit


UNIT = "org.freedesktop.systemd1.Unit"
PATH = "/org/freedesktop/systemd1/unit/stw_2dvictim_2eservice"


def test_dispatch_reports_active_state_of_unit_interface_only():
    seen = []
    w = UnitWatcher(lambda u, s: seen.append((u, s)))
    w._dispatch(PATH, (UNIT, {"ActiveState": ("s", "failed"), "SubState": ("s", "failed")}, []))
    w._dispatch(PATH, (UNIT, {"SubState": ("s", "dead")}, []))
    w._dispatch(PATH, ("org.freedesktop.systemd1.Service", {"ActiveState": ("s", "x")}, []))
    w._dispatch("/org/freedesktop/systemd1", (UNIT, {"ActiveState": ("s", "x")}, []))
    assert seen == [("stw-victim.service", "failed")]


def test_callback_exception_is_logged_not_raised(caplog):
    def boom(unit, state):
        raise RuntimeError("callback bug")
    w = UnitWatcher(boom)
    with caplog.at_level(logging.ERROR, logger="agent.system.unitwatch"):
        w._dispatch(PATH, (UNIT, {"ActiveState": ("s", "active")}, []))
    assert "callback failed for stw-victim.service -> active" in caplog.text


def test_unreachable_bus_reports_error_and_keeps_retrying(tmp_path, caplog):
    w = UnitWatcher(lambda u, s: None, bus_address=f"unix:path={tmp_path}/nope")
    with caplog.at_level(logging.WARNING, logger="agent.system.unitwatch"):
        w.start()
        deadline = time.monotonic() + 5
        while not w.error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.connected is False
        assert "FileNotFoundError" in w.error
        time.sleep(1.5)  # past the first 1 s backoff: a second attempt, not a second log line
        started = time.monotonic()
        w.stop()
    assert time.monotonic() - started < 1.0  # the backoff wait is interruptible
    assert caplog.text.count("cannot connect") == 1
