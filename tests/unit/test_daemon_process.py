"""``steward run`` as a real process talking sd_notify to a real datagram socket, and the
commands that talk to it through the state directory."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import QUIET, REPO


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def daemon(tmp_path, notify_socket):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    conf = tmp_path / "steward.toml"
    conf.write_text(f'[checks.port]\ntargets = ["127.0.0.1:{port}"]\ninterval = 1\n' +
                    QUIET)  # what judges the host, not the daemon, is off
    conf.chmod(0o600)
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket[1], WATCHDOG_USEC="2000000",
               WATCHDOG_PID="", STEWARD_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf)],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    yield proc, conf, tmp_path / "state", listener
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    listener.close()


def messages(sock, until, timeout=10.0):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())
        got.append(msg)
        if until(msg):
            return got
    raise AssertionError(f"no such message in {got}")


def steward(*args, state):
    return subprocess.run([sys.executable, "-m", "agent", *args, "--state-dir", str(state)],
                          cwd=REPO, capture_output=True, text=True, timeout=30, check=False)


def test_ready_after_the_first_pass_then_watchdog_after_each_pass_and_a_prompt_stop(
        daemon, notify_socket):
    proc, _, state, _ = daemon
    sock = notify_socket[0]
    first = messages(sock, lambda m: "READY" in m)
    assert first[-1]["READY"] == "1"
    assert re.match(r"\d+ checks, \d+ OK", first[-1]["STATUS"])
    assert (state / "status.json").exists(), "state written before READY"
    pings = [messages(sock, lambda m: "WATCHDOG" in m)[-1] for _ in range(3)]
    assert all(p["WATCHDOG"] == "1" for p in pings)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - t0 < 2, "SIGTERM stops promptly"
    assert messages(sock, lambda m: "STOPPING" in m)[-1]["STOPPING"] == "1"


def _hostile_configs(tmp_path):
    """(config text, what the rejection must say): each is refused on SIGHUP."""
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o644)
    return [
        ("[checks.port]\nwran = 1\n", "checks.port.wran: unknown key"),
        # the loader once ended in a RecursionError traceback here
        ("deep = " + "[" * 1000 + "]" * 1000 + "\n", "arrays or tables nested more than 16"),
        ("[checks.port]\n" + "k" * 2_000_000 + " = 1\n",
         "checks.port." + "k" * 68 + "…(2000012 bytes): unknown key"),
        ('[notify.email]\nto = ["a@example.com"]\nrelays = ["smtps://127.0.0.1:1"]\n'
         f'username = "u"\npassword_file = "{pw}"\n',
         f'notify.email.password_file = "{pw}": mode 0644 lets others read the secret'),
    ]


def test_a_bad_config_on_sighup_is_rejected_and_the_old_one_keeps_running(daemon,
                                                                          notify_socket):
    proc, conf, state, _ = daemon
    sock = notify_socket[0]
    messages(sock, lambda m: "READY" in m)
    hostile = _hostile_configs(conf.parent)
    for text, _ in hostile:
        conf.write_text(text)
        proc.send_signal(signal.SIGHUP)
        # Two watchdog pings after the signal: the reload was tried and the loop goes on (a
        # 2 MB message on stderr would fill the pipe nobody reads yet, and stop the pings).
        messages(sock, lambda m: "WATCHDOG" in m)
        messages(sock, lambda m: "WATCHDOG" in m)
        assert proc.poll() is None, f"still running after {text[:40]!r}"
    st = json.loads(steward("status", "--json", state=state).stdout)
    assert st["running"] is True
    assert any(c.startswith("port:127.0.0.1:") for c in st["checks"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    err = proc.stderr.read()
    assert err.count("config reload failed, still running with the previous config") == \
        len(hostile)
    for _, expected in hostile:
        assert expected in err, expected
    assert "ALERT" in err and "config: new config rejected" in err
    assert "Traceback" not in err
    assert len(err.encode()) < 64 * 1024, "no value is echoed whole"


def test_a_port_going_down_is_alerted_and_status_says_so(daemon, notify_socket):
    proc, _, state, listener = daemon
    sock = notify_socket[0]
    messages(sock, lambda m: "READY" in m)
    listener.close()
    msg = messages(sock, lambda m: "port:127.0.0.1:" in m.get("STATUS", ""))[-1]
    assert "CRIT" in msg["STATUS"]
    text = steward("status", state=state)
    assert text.returncode == 0
    assert "CRIT    port:127.0.0.1:" in text.stdout
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert "ALERT" in proc.stderr.read()
    assert steward("status", state=state).returncode == 3, "3 once the daemon is gone"


def test_maintenance_on_and_off_and_bad_durations(tmp_path):
    state = tmp_path / "state"
    on = steward("maintenance", "on", "--for", "2h", "postfix", state=state)
    assert on.returncode == 0 and "maintenance on for postfix until" in on.stdout
    data = json.loads((state / "maintenance.json").read_text())
    assert data["until"] is None and 7190 < data["units"]["postfix"] - time.time() <= 7200
    whole = steward("maintenance", "on", state=state)
    assert "the whole machine" in whole.stdout
    assert json.loads((state / "maintenance.json").read_text())["until"] > time.time() + 3500
    off = steward("maintenance", "off", state=state)
    assert off.returncode == 0
    assert json.loads((state / "maintenance.json").read_text()) == {"until": None, "units": {}}
    bad = steward("maintenance", "on", "--for", "soon", state=state)
    assert bad.returncode == 2
    assert "--for 'soon': not a duration (accepted: a positive number with s, m, h or d" \
        in bad.stderr


def test_reset_without_a_daemon_is_queued_and_says_so(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-c", "from agent.daemon_cli import cmd_reset; "
                           f"from agent.state import StateDir; from pathlib import Path; "
                           f"raise SystemExit(cmd_reset(StateDir(Path({str(state)!r})), "
                           "'postfix', wait=0.3))"], cwd=REPO, capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 1
    assert "reset of postfix queued" in proc.stderr
    assert (state / "requests" / "reset-postfix").exists()
