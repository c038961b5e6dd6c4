"""steward on Python 3.9 with EL9's library versions, on a booted systemd: the bullseye root
of tests/py39root.py (steward installed by its own pip and setuptools) booted under
systemd-nspawn, with units/steward.service, an aiosmtpd relay on the container's loopback,
and a fresh ext4 filesystem on a loop device (mounted on the host, its root bound in) for
the backup: backup takes whole local filesystems, not bind mounts of a directory."""

from __future__ import annotations

import email
import email.policy
import json
import time
from pathlib import Path

import pytest

from agent import __version__
from tests import py39root
from tests.fstree import loop_fs
from tests.integration.nspawn import Container, nspawn_available

REPO = Path(__file__).resolve().parents[2]
_reason = nspawn_available() or py39root.unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.skipif(_reason is not None,
                                                                     reason=_reason or "")]

SMTP_PORT = 2525
UNITS = {
    "steward.service": (REPO / "units/steward.service").read_text(),
    "steward.service.d/test.conf": "[Service]\nRestartSec=1s\n",
    "stw-victim.service": "[Service]\nExecStart=/bin/sleep infinity\n",
    "stw-smtp.service": "[Service]\nExecStart=/usr/bin/python3 -m aiosmtpd -n -l "
                        f"127.0.0.1:{SMTP_PORT} -c aiosmtpd.handlers.Mailbox /var/mail/stw\n",
}
CONFIG = f"""
[checks.service]
units = ["stw-victim"]
interval = 1
[checks.timesync]
enabled = false
[checks.updates]
enabled = false
[restart]
backoff = 1
grace = 2
[notify.email]
to = ["admin@example.com"]
from = "steward@py39.example.com"
relays = ["smtp://127.0.0.1:{SMTP_PORT}"]
group_window = 1
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    with loop_fs("ext4", 64, tmp_path_factory.mktemp("py39data")) as data, \
            py39root.Root() as root:
        (data / "src/etc").mkdir(parents=True)
        (data / "src/etc/motd").write_text("backed up under Python 3.9\n")
        (data / "target").mkdir()
        assert root.path is not None
        (root.path / "usr/bin/steward").symlink_to("/usr/local/bin/steward")  # ExecStart=
        conf = root.path / "etc/steward/steward.toml"
        conf.parent.mkdir(mode=0o700)
        conf.write_text(CONFIG)
        conf.chmod(0o600)
        with Container(root.path, units=UNITS, binds={str(data): "/srv/stw"},
                       enable=["stw-victim.service", "stw-smtp.service",
                               "steward.service"]) as c:
            yield c


def wait_for(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def props(box, unit):
    out = box.run(["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,MainPID",
                   unit]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_check_answers_on_booted_systemd(box):
    res = box.run(["python3", "-c", "import sys; print(sys.version_info[:2])"])
    assert res.stdout.strip() == "(3, 9)"
    res = box.run(["steward", "check", "--format", "json"], timeout=60, check=False)
    report = json.loads(res.stdout)
    assert report["steward_version"] == __version__ and report["exit_code"] == res.returncode
    service = next(r for r in report["results"] if r["check"] == "service:stw-victim")
    assert service["status"] == "OK", service  # systemd answered: stw-victim is active


def test_run_as_unit_restarts_a_killed_service(box):
    wait_for("steward.service active", lambda: props(box, "steward.service")["ActiveState"]
             == "active")  # Type=notify: READY=1 came from steward under 3.9
    old = props(box, "stw-victim.service")["MainPID"]
    box.run(["systemctl", "kill", "-s", "KILL", "stw-victim"])
    def restarted():
        now = props(box, "stw-victim.service")
        return now["ActiveState"] == "active" and now["MainPID"] not in ("0", old)

    wait_for("stw-victim restarted by steward", restarted, timeout=40)
    log = box.run(["journalctl", "-u", "steward", "--no-pager", "-o", "cat"]).stdout
    # jeepney 0.6's push notification (agent/system/unitwatch.py) saw the kill
    assert "watching systemd units on SYSTEM" in log, log
    assert "systemctl restart stw-victim.service" in log, log
    assert "Traceback" not in log, log
    assert props(box, "steward.service")["NRestarts"] == "0"


def maildir(box):
    assert box.root is not None
    new = box.root / "var/mail/stw/new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_notify_test_mail_arrives(box):
    wait_for("aiosmtpd listening", lambda: f":{SMTP_PORT}" in box.run(
        ["ss", "-ltn"]).stdout)
    before = {p.name for p in maildir(box)}
    res = box.run(["steward", "notify", "test"], timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    new = wait_for("the test mail", lambda: [p for p in maildir(box) if p.name not in before])
    msgs = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in new]
    test = [m for m in msgs if "test" in str(m["Subject"]).lower()]
    assert test, [str(m["Subject"]) for m in msgs]
    assert test[0]["To"] == "admin@example.com"
    assert test[0]["From"] == "steward@py39.example.com"


def test_audit_judges_the_container(box):
    res = box.run(["steward", "audit", "--format", "json"], timeout=60, check=False)
    assert res.returncode in (0, 1, 2), res.stderr
    report = json.loads(res.stdout)
    assert report["steward_version"] == __version__
    ids = {r["check"] for r in report["results"]}
    assert "audit:postfix.vrfy" in ids and "audit" in ids, ids


def test_backup_create_and_verify(box):
    res = box.run(["steward", "backup", "create", "--source", "/srv/stw",
                   "--target", "/srv/stw/target"], timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    res = box.run(["steward", "backup", "verify", "--target", "/srv/stw/target"],
                  timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    res = box.run(["steward", "backup", "list", "--target", "/srv/stw/target",
                   "--format", "json"], timeout=60)
    assert len(json.loads(res.stdout)["generations"]) == 1
