"""Unit layouts against a real systemd (PID 1 in a systemd-nspawn container), one container
for all: instances of a template, a socket-activated service, a daemon that runs in another
unit than the one its probe is linked to (found by the process holding the port), and the
default discovery choosing between EL9's alternatives (named / named-chroot) and Debian names."""

from __future__ import annotations

import pytest

from agent.config import Config
from agent.env import Env
from agent.system.commands import CommandRunner
from agent.system.systemd import Systemd
from checks.services import discover
from tests.integration.boxed import install
from tests.integration.nspawn import Container, build_rootfs, nspawn_available
from tests.integration.test_supervisor_nspawn import journal, show, status, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(nspawn_available() is not None,
                                 reason=nspawn_available() or "")]

SLEEP = "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
RELAY = """import socketserver
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 relay ESMTP\\r\\n")
        for line in self.rfile:
            if line[:4].upper() == b"QUIT":
                self.wfile.write(b"221 bye\\r\\n")
                return
            self.wfile.write(b"250-relay\\r\\n250 HELP\\r\\n" if line[:4].upper() in
                             (b"EHLO", b"HELO") else b"250 ok\\r\\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 2526), H).serve_forever()
"""
UNITS = {
    "worker@.service": SLEEP,
    # Socket activation; the socket's next start fails once /run/echod.block exists (the
    # failing start removes it: steward's restart must not race the test).
    "echod.socket": "[Socket]\nListenStream=127.0.0.1:7007\n"
                    "ExecStartPre=/bin/sh -c 'rm /run/echod.block 2>/dev/null && exit 1; "
                    "exit 0'\n"
                    "[Install]\nWantedBy=sockets.target\n",
    "echod.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    # An SMTP daemon of the administrator's own unit; the smtp probe is linked to postfix.
    "smtp-relay.service": "[Service]\nExecStart=/usr/bin/python3 /usr/local/bin/relay.py\n"
                          "[Install]\nWantedBy=multi-user.target\n",
    "named.service": SLEEP,  # EL9's alternatives: installed, only named-chroot enabled
    "named-chroot.service": SLEEP,
    "apache2.service": SLEEP,  # Debian's name of httpd
}
CONFIG = """[checks.service]
units = ["postfix", "worker@", "echod"]
[checks.smtp]
targets = ["localhost:2526"]
modes = { "localhost:2526" = "plain" }
interval = 5
connect_timeout = 2
[restart]
budget = 5
backoff = 1
"""


@pytest.fixture(scope="module")
def box():
    with Container(build_rootfs(), units=UNITS) as c:
        c.write_file("/usr/local/bin/relay.py", RELAY)
        c.run(["systemctl", "enable", "--now", "worker@a", "worker@b", "echod.socket",
               "smtp-relay", "named-chroot", "apache2"], timeout=60)
        install(c)
        c.write_file("/etc/steward/steward.toml", CONFIG, mode=0o600)
        c.run(["systemctl", "stop", "monit"], timeout=30)
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "start", "steward"], timeout=60)
        wait_for("the layouts watched", lambda: {"service:worker@a", "service:worker@b",
                                                 "service:echod", "smtp:localhost:2526"}
                 <= set(status(c)["checks"]), timeout=60)
        yield c


def main_pid(box, unit):
    return int(show(box, unit, "MainPID")["MainPID"])


def test_default_discovery_finds_the_used_alternative_and_debian_names(box):
    runner = CommandRunner()
    found = discover(Env(Config("<test>"), commands=runner,
                         systemd=Systemd(runner, box.systemctl_argv)))
    assert "named-chroot" in found and "named" not in found  # installed, not used
    assert "apache2" in found and "httpd" not in found
    assert "postfix" in found


def test_instances_of_a_template_are_watched_and_restarted(box):
    checks = status(box)["checks"]
    assert checks["service:worker@a"]["status"] == "OK"
    assert checks["service:worker@b"]["unit"] == "worker@b"
    old = main_pid(box, "worker@b.service")
    box.run(["kill", "-9", str(old)])  # Restart= is not set: only steward brings it back
    wait_for("worker@b back", lambda: main_pid(box, "worker@b.service") not in (0, old),
             timeout=15)
    assert "steward ran: systemctl restart worker@b.service" in journal(box)


def test_a_socket_activated_service_is_ok_inactive_and_its_failed_socket_is_restarted(box):
    assert show(box, "echod.service", "ActiveState")["ActiveState"] == "inactive"
    st = status(box)["checks"]["service:echod"]
    assert st["status"] == "OK" and st["unit"] == "echod.socket"
    assert "started on demand by echod.socket" in st["summary"]
    box.run(["touch", "/run/echod.block"])
    box.run(["systemctl", "restart", "echod.socket"], check=False)  # fails: Result=exit-code
    wait_for("steward restarts the socket", lambda: "steward ran: systemctl restart "
             "echod.socket" in journal(box), timeout=15)
    wait_for("the socket listens again", lambda: show(
        box, "echod.socket", "ActiveState")["ActiveState"] == "active", timeout=10)
    assert "systemctl restart echod.service" not in journal(box)
    assert "restart CRIT service:echod" in journal(box)


def test_a_hung_daemon_is_restarted_in_the_unit_holding_its_port(box):
    old = main_pid(box, "smtp-relay.service")
    box.run(["systemctl", "kill", "-s", "STOP", "smtp-relay.service"])
    wait_for("smtp-relay restarted", lambda: main_pid(box, "smtp-relay.service") not in
             (0, old), timeout=30, step=0.2)
    log = journal(box)
    assert "restart CRIT smtp:localhost:2526: steward ran: systemctl restart " \
        "smtp-relay.service" in log
    assert "systemctl restart postfix" not in log
