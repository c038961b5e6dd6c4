"""The certbot renewer as systemd sees it: Debian's certbot.timer and certbot.service (their
unit files copied verbatim from the host's certbot package; the service's ExecStart is the
package's, certbot itself is not in the container) in a booted systemd container, and
Debian's /etc/cron.d/certbot, which steps aside when systemd runs. The certrenew check runs
inside (slow, root)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.integration.nspawn import nspawn_available

UNITS = Path("/lib/systemd/system")
pytestmark = [
    pytest.mark.slow, pytest.mark.root,
    pytest.mark.skipif(nspawn_available() is not None, reason=nspawn_available() or "-"),
    pytest.mark.skipif(not (UNITS / "certbot.timer").exists(),
                       reason="needs Debian's certbot package (its certbot.timer)"),
]

INSIDE = textwrap.dedent("""\
    import json, sys
    sys.path.insert(0, "/opt/steward")
    from agent.config import Config
    from agent.env import Env
    from checks.certrenew import CertRenewCheck, CertRenewOptions
    env = Env(Config("<test>"))
    [check] = CertRenewCheck.instances(CertRenewOptions(), env)
    r = {r.check: r for r in check.run(env)}["certrenew:renewer"]
    print(json.dumps([r.status.name, r.summary, r.details]))
    """)
CRON = ("0 */12 * * * root test -x /usr/bin/certbot -a \\! -d /run/systemd/system && "
        "perl -e 'sleep int(rand(43200))' && certbot -q renew --no-random-sleep-on-renew\n")


@pytest.fixture(scope="module")
def box():
    from tests.integration.boxed import install
    from tests.integration.nspawn import Container, build_rootfs

    units = {name: (UNITS / name).read_text() for name in ("certbot.timer", "certbot.service")}
    with Container(build_rootfs(), units=units) as c:
        install(c)
        c.write_file("/usr/local/lib/renewer.py", INSIDE)
        c.write_file("/etc/letsencrypt/renewal/mail.example.test.conf",
                     "cert = /etc/letsencrypt/live/mail.example.test/cert.pem\n"
                     "[renewalparams]\nauthenticator = standalone\n")
        c.write_file("/etc/cron.d/certbot", CRON)
        yield c


def renewer(box) -> list:
    p = box.run(["python3", "/usr/local/lib/renewer.py"], timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_timer_states_and_the_cron_job_that_steps_aside(box):
    # the package's state after install: enabled and started
    box.run(["systemctl", "enable", "--now", "certbot.timer"])
    status, summary, details = renewer(box)
    assert status == "OK" and summary == "certbot renews from certbot.timer (enabled, active)"
    assert "certbot.timer: enabled, active" in details
    # enabled but not running (stopped by hand, or enabled without --now): it will not fire
    box.run(["systemctl", "stop", "certbot.timer"])
    status, summary, _ = renewer(box)
    assert status == "WARN" and summary == ("certbot.timer is enabled but not active: it fires "
                                            "only after the next boot"), summary
    # running but not enabled: gone after the next boot
    box.run(["systemctl", "disable", "--now", "certbot.timer"])
    box.run(["systemctl", "start", "certbot.timer"])
    status, summary, _ = renewer(box)
    assert status == "WARN" and "active but not enabled" in summary, summary
    # neither: Debian's cron job would take over, but only where systemd does not run
    box.run(["systemctl", "stop", "certbot.timer"])
    status, summary, details = renewer(box)
    assert status == "CRIT" and summary.startswith("nothing renews the certbot certificates")
    assert "/etc/cron.d/certbot runs certbot only when systemd does not run" in details
    assert "certbot.timer: disabled, inactive" in details
    # a crontab line of one's own (no systemd guard) does renew
    box.write_file("/etc/crontab", "17 3 * * * root certbot -q renew\n")
    status, summary, _ = renewer(box)
    assert status == "OK" and summary == "certbot renews from /etc/crontab", summary
