"""The milter check inside a real Postfix: Debian's Postfix booted under systemd in an nspawn
container, its smtpd_milters naming a real OpenDKIM (Debian's, run on the host, its unix
socket bind-mounted into the chroot's queue directory) and a dead milter socket. The check
run in the container must call OpenDKIM OK and the dead one CRIT, and Postfix itself must
agree: mail is tempfailed while the dead milter is listed and signed by OpenDKIM once it is
not (slow, root)."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from tests import opendkimbed
from tests.integration.nspawn import nspawn_available

OPENDKIM = opendkimbed.OPENDKIM
pytestmark = [
    pytest.mark.slow, pytest.mark.root,
    pytest.mark.skipif(nspawn_available() is not None, reason=nspawn_available() or "-"),
    pytest.mark.skipif(OPENDKIM is None, reason="needs opendkim and opendkim-tools"),
]

INSIDE = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, "/opt/steward")
    from agent.config import Config
    from agent.env import Env
    from checks.milters import MilterCheck, MilterOptions
    env = Env(Config("<test>"))
    [check] = MilterCheck.instances(MilterOptions(connect_timeout=2.0), env)
    print(json.dumps({r.check: [r.status.name, r.summary] for r in check.run(env)}))
    """)
SEND = textwrap.dedent("""\
    import smtplib, sys
    try:
        with smtplib.SMTP("127.0.0.1", 25, timeout=20) as s:
            s.sendmail("alice@example.test", ["root@localhost"],
                       "From: alice@example.test\\r\\nTo: root@localhost\\r\\n"
                       "Subject: milter test\\r\\n\\r\\nhello\\r\\n")
        print("accepted")
    except smtplib.SMTPException as e:
        print("refused", e)
    """)
DEAD = ("import os, socket; p = '/var/spool/postfix/dead/dead.sock'; "
        "socket.socket(socket.AF_UNIX).bind(p); os.chmod(p, 0o666)")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    from tests.integration.boxed import install
    from tests.integration.nspawn import Container, build_rootfs
    d = tmp_path_factory.mktemp("opendkim")
    sock = d / "sock"
    sock.mkdir(mode=0o755)
    # the key lives under /tmp: world-writable parents would make OpenDKIM refuse to sign
    with opendkimbed.opendkim(d, f"local:{sock}/opendkim.sock",
                              extra="UMask 000\nRequireSafeKeys false\n"), \
            Container(build_rootfs(), binds={str(sock): "/var/spool/postfix/opendkim"}) as c:
        c.run(["mkdir", "-p", "/var/spool/postfix/dead"])
        c.run(["python3", "-c", DEAD])  # a socket file nobody listens on
        c.run(["postconf", "-e", "smtpd_milters=unix:/opendkim/opendkim.sock, "
               "unix:/dead/dead.sock", "non_smtpd_milters=$smtpd_milters",
               "milter_default_action=tempfail"])
        c.run(["postfix", "reload"])
        install(c)
        c.write_file("/usr/local/lib/steward-milter.py", INSIDE)
        c.write_file("/usr/local/lib/send.py", SEND)
        yield c


def inside(box, script: str) -> str:
    p = box.run(["python3", script], timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_the_check_in_a_real_postfix_agrees_with_what_postfix_does(box):
    got = json.loads(inside(box, "/usr/local/lib/steward-milter.py"))
    ok = got["milter:smtpd_milters:unix:/opendkim/opendkim.sock"]
    dead = got["milter:smtpd_milters:unix:/dead/dead.sock"]
    assert ok[0] == "OK" and "answers (milter protocol" in ok[1], got
    assert dead[0] == "CRIT" and dead[1] == ("milter unix:/dead/dead.sock does not answer: "
                                             "Connection refused"), got
    assert got["milter:non_smtpd_milters:unix:/dead/dead.sock"][0] == "CRIT"
    # Postfix itself: with the dead milter and default_action=tempfail, mail is held off
    sent = inside(box, "/usr/local/lib/send.py")
    assert sent.startswith("refused") and "451" in sent, sent
    # without it, OpenDKIM signs what it accepts
    box.run(["postconf", "-e", "smtpd_milters=unix:/opendkim/opendkim.sock",
             "non_smtpd_milters=$smtpd_milters"])
    box.run(["postfix", "reload"])
    got = json.loads(inside(box, "/usr/local/lib/steward-milter.py"))
    assert [s for s, _ in got.values()] == ["OK", "OK"], got
    log = ["journalctl", "-n", "30", "--no-pager"]
    assert inside(box, "/usr/local/lib/send.py") == "accepted", \
        box.run(log, check=False).stdout
    deadline = time.monotonic() + 30
    mbox = ""
    while "DKIM-Signature" not in mbox and time.monotonic() < deadline:
        time.sleep(0.5)
        mbox = box.run(["cat", "/var/mail/root"], check=False).stdout
    assert "DKIM-Signature: v=1; a=rsa-sha256" in mbox and "d=example.test" in mbox, \
        box.run(["journalctl", "-u", "postfix@-", "-n", "30", "--no-pager"], check=False).stdout
