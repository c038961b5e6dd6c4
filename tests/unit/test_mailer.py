"""Alerts by e-mail against a real SMTP server on loopback, the notices policy in front of
the mailer as under ``steward run``: grouping, cooldown, recovery, reminders, digest,
per-recipient severity, the outbox across an outage and a crash. The tests drive time through
the clock the mailer reads and the ``now`` the policy is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agent.config.sections import AlertOptions, EmailOptions, Route
from agent.events import Event
from agent.memory import CheckRecord, Memory
from agent.model import Status
from agent.notices import Notices
from agent.notify.mailer import Mailer, send_with, sender_for
from tests.clocks import FakeClock
from tests.conftest import REPO
from tests.mailserver import MailServer, free_port

T0 = 1_800_000_000.0  # a fixed "now": the tests drive time themselves


def options(port: int, tmp: Path, **kw) -> EmailOptions:
    base = {"to": (("admin@example.com", "WARN"), ("boss@example.com", "CRIT")),
            "sender": "steward@mail1.example.com", "relays": (f"smtp://127.0.0.1:{port}",),
            "group_window": 30.0, "template_dir": str(tmp / "templates"), "timeout": 5.0}
    return EmailOptions(**{**base, **kw})


class Chain:
    """The notices policy and the mailer, as the supervisor joins them."""

    def __init__(self, port: int, tmp: Path, alerts: dict | None = None, **kw) -> None:
        self.clock = FakeClock(T0)
        self.mailer = Mailer(options(port, tmp, **kw), tmp / "state", "mail1", clock=self.clock)
        self.notices = Notices(Memory(), AlertOptions(**{"cooldown": 900.0, "reminder": 3600.0,
                                                          **(alerts or {})}))

    def send(self, *events: Event, at: float = T0) -> None:
        self.clock.t = at
        for e in self.notices.decide(events, at):
            if Route().takes(e):  # the e-mail action's route: what is told, none held back
                self.mailer.send(e, "mail1")

    def tick(self, now: float, checks: dict) -> None:
        self.clock.t = now
        for e in self.notices.later(now, checks):
            self.mailer.send(e, "mail1")
        self.mailer.tick(now, checks)

    def deliver(self, now: float) -> None:
        deliver(self.mailer, now)


@pytest.fixture
def server(tmp_path):
    with MailServer(tmp_path) as srv:
        yield srv


def mailer(server, tmp_path, **kw) -> Mailer:
    return Mailer(options(server.port, tmp_path, **kw), tmp_path / "state", "mail1",
                  clock=FakeClock(T0))


def deliver(m: Mailer, now: float) -> None:
    m.outbox.deliver(send_with(sender_for(m.opts)), now)


def problem(check, status=Status.CRIT, since=T0, summary="down"):
    return Event("problem", check, status, summary, remedy=f"fix {check}", since=since)


def recovery(check, since):
    return Event("recovery", check, Status.OK, "fine again", since=since)


def failing(*checks, status=Status.CRIT):
    return {c: CheckRecord(status=status, since=T0, summary="still down") for c in checks}


def by_rcpt(server):
    out: dict[str, list] = {}
    for msg in server.messages():
        out.setdefault(str(msg["To"]), []).append(msg)
    return out


def body(msg, subtype):
    return msg.get_body(preferencelist=(subtype,)).get_content()


def test_twenty_checks_failing_together_are_one_mail_per_recipient(server, tmp_path):
    c = Chain(server.port, tmp_path)
    alerts = [problem(f"disk:/d{i}", Status.WARN, T0 + i * 0.2) for i in range(18)]
    alerts += [problem("service:postfix", since=T0 + 1), problem("service:dovecot",
                                                                 since=T0 + 2)]
    c.send(*alerts)
    c.tick(T0 + 10, {})
    assert c.mailer.outbox.queued() == [], "the grouping window is still open"
    c.tick(T0 + 31, {})
    c.deliver(T0 + 31)
    got = by_rcpt(server)
    [admin] = got["admin@example.com"]
    [boss] = got["boss@example.com"]
    assert admin["Subject"].startswith("[steward] mail1: CRIT service:")
    assert "and 19 more" in admin["Subject"]
    text = body(admin, "plain")
    assert all(f"disk:/d{i}" in text for i in range(18)) and "service:dovecot" in text
    assert "fix service:postfix" in text, "the remedy is in the mail"
    assert "disk:/d0" not in body(boss, "plain"), "boss asked for CRIT only"
    assert "service:postfix" in body(boss, "html")
    assert admin["Message-ID"] != boss["Message-ID"]
    assert admin["Auto-Submitted"] == "auto-generated"


def test_a_flapping_check_is_held_by_the_cooldown_and_recovery_is_mailed(server, tmp_path):
    c = Chain(server.port, tmp_path, to=(("admin@example.com", "WARN"),))
    key = "port:localhost:25"
    c.send(problem(key))
    c.tick(T0 + 31, failing(key))
    c.send(recovery(key, T0 + 60), at=T0 + 60)
    c.tick(T0 + 91, {})
    for t in (120, 240, 360):  # fails and recovers again and again within 900 s
        c.send(problem(key, since=T0 + t), at=T0 + t)
        c.tick(T0 + t + 31, failing(key))
        c.send(recovery(key, T0 + t + 60), at=T0 + t + 60)
        c.tick(T0 + t + 91, {})
    c.send(problem(key, since=T0 + 600), at=T0 + 600)
    c.tick(T0 + 631, failing(key))
    c.tick(T0 + 960, failing(key))  # the cooldown is over and it is failing
    c.tick(T0 + 991, failing(key))
    c.deliver(T0 + 991)
    subjects = [str(msg["Subject"]) for msg in server.messages()]
    assert len(subjects) == 3, subjects
    assert subjects[0].startswith("[steward] mail1: CRIT port:localhost:25")
    assert subjects[1].startswith("[steward] mail1: RECOVERED port:localhost:25")
    assert subjects[2].startswith("[steward] mail1: CRIT port:localhost:25")
    assert "7 more state change(s) held back" in body(server.messages()[2], "plain"), \
        "says how often it changed meanwhile"


def test_a_worse_status_inside_the_cooldown_is_mailed_at_once(server, tmp_path):
    c = Chain(server.port, tmp_path, to=(("admin@example.com", "WARN"),))
    c.send(problem("disk:/", Status.WARN))
    c.tick(T0 + 31, failing("disk:/", status=Status.WARN))
    c.send(problem("disk:/", Status.CRIT, since=T0 + 100), at=T0 + 100)
    c.tick(T0 + 131, failing("disk:/"))
    c.deliver(T0 + 131)
    assert [str(x["Subject"]).split(":")[1].split()[0] for x in server.messages()] == [
        "WARN", "CRIT"]


def test_a_recovery_reaches_the_recipients_its_problem_reached(server, tmp_path):
    c = Chain(server.port, tmp_path)  # admin from WARN, boss from CRIT
    c.send(problem("disk:/", Status.WARN), problem("service:postfix"))
    c.tick(T0 + 31, {})
    c.send(recovery("disk:/", T0 + 60), recovery("service:postfix", T0 + 60), at=T0 + 60)
    c.tick(T0 + 91, {})
    c.deliver(T0 + 91)
    got = by_rcpt(server)
    assert len(got["admin@example.com"]) == 2 and len(got["boss@example.com"]) == 2
    boss_recovery = body(got["boss@example.com"][1], "plain")
    assert "service:postfix" in boss_recovery and "disk:/" not in boss_recovery


def test_restart_notices_join_the_problem_mail_and_what_stays_failing_is_reminded(
        server, tmp_path):
    c = Chain(server.port, tmp_path, to=(("admin@example.com", "WARN"),))
    c.send(problem("service:postfix"),
           Event("restart", "service:postfix", Status.CRIT, "steward ran: systemctl restart "
                 "postfix.service (1 of 3 within 15 min)", since=T0 + 1))
    c.tick(T0 + 31, failing("service:postfix"))
    for t in range(60, 4 * 3600 + 600, 60):
        c.tick(T0 + t, failing("service:postfix"))
    c.deliver(T0 + 5 * 3600)
    msgs = server.messages()
    assert "systemctl restart postfix.service (1 of 3 within 15 min)" in body(msgs[0], "plain")
    assert len(msgs) == 3, "the problem, a reminder after 1 h, another after 2 more hours"
    assert all("service:postfix" in str(x["Subject"]) for x in msgs)


def test_daily_digest_lists_what_is_still_not_ok(server, tmp_path):
    at = datetime.fromtimestamp(T0 + 3600).strftime("%H:%M")
    c = Chain(server.port, tmp_path, alerts={"digest": at}, to=(("admin@example.com", "WARN"),))
    checks = {**failing("disk:/var", status=Status.WARN), "memory": CheckRecord()}
    c.tick(T0, checks)
    c.tick(T0 + 3600, checks)
    c.tick(T0 + 3700, checks)
    c.tick(T0 + 3800, checks)  # once a day
    c.deliver(T0 + 3800)
    [digest] = server.messages()
    assert digest["X-Steward-Kind"] == "digest"
    assert "disk:/var" in body(digest, "plain") and "memory" not in body(digest, "plain")


def test_summaries_with_html_or_template_syntax_are_escaped_never_run(server, tmp_path):
    m = mailer(server, tmp_path, to=(("admin@example.com", "WARN"),))
    m.send(problem("service:x", summary="<script>alert(1)</script> {{ 7*7 }} {% if 1 %}"),
           "mail1")
    m.tick(T0 + 31, {})
    deliver(m, T0 + 31)
    [msg] = server.messages()
    html, text = body(msg, "html"), body(msg, "plain")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "{{ 7*7 }}" in text and "49" not in text and "{% if 1 %}" in text


def test_server_down_for_an_hour_then_everything_is_delivered_exactly_once(tmp_path):
    port = free_port()
    clock = FakeClock(T0)
    m = Mailer(options(port, tmp_path, to=(("admin@example.com", "WARN"),)),
               tmp_path / "state", "mail1", clock=clock)
    for i in range(3):
        clock.t = T0 + i * 600
        m.send(problem(f"service:s{i}", since=T0 + i * 600), "mail1")
        m.tick(T0 + i * 600 + 31, {})
    assert len(m.outbox.queued()) == 3
    attempts = 0
    for t in range(0, 3600, 10):  # an hour of the relay being down
        attempts += len(m.outbox.deliver(send_with(sender_for(m.opts)), T0 + t))
    assert len(m.outbox.queued()) == 3
    assert 3 < attempts < 40, "retried with backoff, not every 10 s"
    assert m.outbox.queued()[0].last_error
    with MailServer(tmp_path, port=port) as srv:
        for t in range(3600, 3600 + 2000, 10):
            m.outbox.deliver(send_with(sender_for(m.opts)), T0 + t)
        assert m.outbox.queued() == []
        ids = [x["Message-ID"] for x in srv.messages()]
    assert len(ids) == 3 and len(set(ids)) == 3


CRASH = """
import os, signal, sys, time
from pathlib import Path
from agent.config.sections import EmailOptions
from agent.notify.mailer import send_with, sender_for
from agent.notify.outbox import Outbox
opts = EmailOptions(to=(("admin@example.com", "WARN"),), relays=(sys.argv[2],))
real = send_with(sender_for(opts))
def send_then_die(msg):
    results = real(msg)
    os.kill(os.getpid(), signal.SIGKILL)  # accepted by the relay, not yet removed
outbox = Outbox(Path(sys.argv[1]))
outbox.deliver(real if len(sys.argv) > 3 else send_then_die, time.time(), force=True)
"""


def test_a_crash_between_acceptance_and_removal_gives_one_duplicate_same_message_id(
        server, tmp_path):
    m = mailer(server, tmp_path, to=(("admin@example.com", "WARN"),))
    m.send(problem("service:postfix"), "mail1")
    m.tick(T0 + 31, {})
    relay = f"smtp://127.0.0.1:{server.port}"
    outbox = str(m.outbox.path)
    killed = subprocess.run([sys.executable, "-c", CRASH, outbox, relay], cwd=REPO,
                            timeout=60, check=False)
    assert killed.returncode == -9
    assert len(m.outbox.queued()) == 1, "still queued after the crash"
    again = subprocess.run([sys.executable, "-c", CRASH, outbox, relay, "no-crash"], cwd=REPO,
                           timeout=60, check=False)
    assert again.returncode == 0
    assert m.outbox.queued() == []
    ids = [x["Message-ID"] for x in server.messages()]
    assert len(ids) == 2 and ids[0] == ids[1]


def test_pending_alerts_are_queued_on_stop_so_a_restart_loses_none(server, tmp_path):
    m = mailer(server, tmp_path, to=(("admin@example.com", "WARN"),))
    m.send(problem("service:postfix"), "mail1")
    state = json.loads((tmp_path / "state" / "mail.json").read_text())
    assert [e["check"] for e in state["pending"]] == ["service:postfix"]
    m.stop()
    assert len(m.outbox.queued()) == 1
    assert json.loads((tmp_path / "state" / "mail.json").read_text())["pending"] == []
    assert oct(os.stat(tmp_path / "state" / "mail.json").st_mode & 0o777) == "0o600"


def test_alerts_in_the_grouping_window_survive_a_crash(server, tmp_path):
    m = mailer(server, tmp_path, to=(("admin@example.com", "WARN"),))
    m.send(problem("service:postfix"), "mail1")
    del m  # killed inside the window: nothing queued yet, nothing stopped
    again = mailer(server, tmp_path, to=(("admin@example.com", "WARN"),))
    again.tick(T0 + 31, {})
    deliver(again, T0 + 31)
    [msg] = server.messages()
    assert "service:postfix" in str(msg["Subject"])
