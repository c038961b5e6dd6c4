"""``steward notify test|flush``, the undeliverable check, and ``steward run`` mailing for real."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.mailserver import MailServer, free_port


def config(tmp_path, relays, extra=""):
    conf = tmp_path / "steward.toml"
    conf.write_text(f'[notify.email]\nto = ["admin@example.com"]\nfrom = "steward@mail1.test"\n'
                    f"relays = {json.dumps(relays)}\n{extra}")
    conf.chmod(0o600)
    return conf


def steward(*args, conf, tmp_path):
    return subprocess.run([sys.executable, "-m", "agent", *args, "--config", str(conf),
                           "--state-dir", str(tmp_path / "state")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_notify_test_reports_each_relay_and_uses_the_second_when_the_first_is_down(tmp_path):
    down = free_port()
    with MailServer(tmp_path) as srv:
        conf = config(tmp_path, [f"smtp://127.0.0.1:{down}", f"smtp://127.0.0.1:{srv.port}"])
        proc = steward("notify", "test", conf=conf, tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"smtp://127.0.0.1:{down}: FAILED" in proc.stdout
        assert f"smtp://127.0.0.1:{srv.port}: accepted" in proc.stdout
        [msg] = srv.messages()
    assert msg["X-Steward-Kind"] == "test" and "mail1" not in str(msg["To"])
    assert f"delivered: {msg['Message-ID']}" in proc.stdout


def test_nothing_accepts_the_test_mail_queued_visible_then_flushed(tmp_path):
    port = free_port()
    conf = config(tmp_path, [f"smtp://127.0.0.1:{port}"])
    proc = steward("notify", "test", conf=conf, tmp_path=tmp_path)
    assert proc.returncode == 1
    assert "not delivered: the test mail stays queued" in proc.stdout
    check = steward("check", "--only", "notify", "--format", "json", conf=conf,
                    tmp_path=tmp_path)
    [res] = json.loads(check.stdout)["results"]
    assert res["summary"].startswith("1 mail queued") or "undeliverable" in res["summary"]
    assert "Connection refused" in res["details"] or "refused" in res["details"].lower()
    with MailServer(tmp_path, port=port) as srv:
        flush = steward("notify", "flush", conf=conf, tmp_path=tmp_path)
        assert flush.returncode == 0, flush.stdout + flush.stderr
        assert "delivered 1, 0 still queued" in flush.stdout
        assert len(srv.messages()) == 1


def test_mail_stuck_for_long_is_reported_by_steward_check(tmp_path):
    conf = config(tmp_path, [f"smtp://127.0.0.1:{free_port()}"])
    steward("notify", "test", conf=conf, tmp_path=tmp_path)
    outbox = tmp_path / "state" / "outbox"
    [meta] = outbox.glob("*.json")
    data = json.loads(meta.read_text())
    data["queued_at"] -= 25 * 60  # as if it had waited 25 minutes
    meta.write_text(json.dumps(data))
    check = steward("check", "--only", "notify", conf=conf, tmp_path=tmp_path)
    assert check.returncode == 1
    assert "WARN    notify  notifications undeliverable for 25 min, 1 queued" in check.stdout


def test_no_recipients_is_a_warning_and_notify_test_says_what_is_missing(tmp_path):
    conf = tmp_path / "steward.toml"
    conf.write_text("")
    conf.chmod(0o600)
    check = steward("check", "--only", "notify", conf=conf, tmp_path=tmp_path)
    assert "no e-mail recipients: alerts reach only the journal" in check.stdout
    proc = steward("notify", "test", conf=conf, tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "no [notify.email] recipients (to = [...]) configured" in proc.stderr


@pytest.mark.parametrize("extra, expected", [
    ('username = "u"\n', "username is set but password_file is not"),
    ('username = "u"\npassword_file = "{pw}"\n', "a relay is plain smtp://"),
    ('digest = "25:00"\n', 'notify.email.digest = "25:00": not a time of day HH:MM'),
])
def test_inconsistent_mail_settings_are_config_errors(tmp_path, extra, expected):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    conf = config(tmp_path, ["smtp://127.0.0.1:25"], extra.replace("{pw}", str(pw)))
    proc = steward("config", "check", conf=conf, tmp_path=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr


def _secret(path, text="s3cret\n", mode=0o600):
    path.write_text(text)
    path.chmod(mode)


@pytest.mark.parametrize("make, expected", [
    (lambda pw: None, "no such file; fix: write the password into"),
    (lambda pw: _secret(pw, mode=0o644), "mode 0644 lets others read the secret (want 0600); "
     "fix: chmod 600"),
    (lambda pw: _secret(pw, ""), "empty"),
    (lambda pw: pw.mkdir(), "not a regular file"),
])
def test_an_unusable_password_file_is_refused_at_load_naming_the_key(tmp_path, make,
                                                                       expected):
    pw = tmp_path / "secret"
    make(pw)
    conf = config(tmp_path, ["smtps://127.0.0.1:465"],
                  f'username = "u"\npassword_file = "{pw}"\n')
    for command in (("config", "check"), ("check", "--only", "notify")):
        proc = steward(*command, conf=conf, tmp_path=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == ""
        assert f'notify.email.password_file = "{pw}": {expected}' in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr) < 1000


def test_the_notify_check_is_crit_when_the_password_file_turns_unsafe_after_load(tmp_path):
    from agent.config import load
    from agent.env import Env
    from agent.registry import discover
    from checks.notify import NotifyCheck

    pw = tmp_path / "secret"
    pw.write_text("s3cret\n")
    pw.chmod(0o600)
    conf = config(tmp_path, ["smtps://127.0.0.1:465"],
                  f'username = "u"\npassword_file = "{pw}"\n')
    env = Env(load(conf, discover().checks), state_dir=tmp_path / "state")
    check = NotifyCheck(env.config.checks["notify"])
    [ok] = check.run(env)
    assert ok.status.name == "OK", ok
    pw.chmod(0o644)  # someone loosens it while the daemon runs
    [bad] = check.run(env)
    assert bad.status.name == "CRIT"
    assert f"password_file {pw}: mode 0644 lets others read the secret" in bad.summary
    assert bad.remedy == f"chmod 600 {pw}"
    pw.unlink()
    [gone] = check.run(env)
    assert gone.status.name == "CRIT" and "no such file" in gone.summary


def test_steward_run_mails_one_grouped_problem_and_then_the_recovery(tmp_path):
    down1, down2 = free_port(), free_port()
    with MailServer(tmp_path) as srv:
        conf = config(tmp_path, [f"smtp://127.0.0.1:{srv.port}"],
                      "group_window = 2\n[checks.service]\nenabled = false\n"
                      "[checks.timesync]\nenabled = false\n[checks.audit]\nenabled = false\n"
                      # the machine's own mail queue and updates are not what this is about
                      "[checks.mailqueue]\nenabled = false\n[checks.updates]\nenabled = false\n"
                      # nor the load of a busy CI machine (a third problem in the mail)
                      "[checks.load]\nenabled = false\n[checks.milter]\nenabled = false\n"
                      "[checks.certrenew]\nenabled = false\n"
                      f'[checks.port]\ntargets = ["127.0.0.1:{down1}", "127.0.0.1:{down2}"]'
                      "\ninterval = 1\n")
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(conf),
                                 "--state-dir", str(tmp_path / "state")], cwd=REPO,
                                stderr=subprocess.DEVNULL)
        listener = socket.socket()
        try:
            deadline = time.monotonic() + 20
            while not srv.messages() and time.monotonic() < deadline:
                time.sleep(0.2)
            [first] = srv.messages()
            assert "and 1 more" in str(first["Subject"]), "both ports in one mail"
            text = first.get_body(preferencelist=("plain",)).get_content()
            assert f"127.0.0.1:{down1}" in text and f"127.0.0.1:{down2}" in text
            listener.bind(("127.0.0.1", down1))  # the first port comes back
            listener.listen(8)
            while len(srv.messages()) < 2 and time.monotonic() < deadline + 10:
                time.sleep(0.2)
            second = srv.messages()[1]
            assert str(second["Subject"]).strip().startswith(
                f"[steward] {socket.gethostname()}: RECOVERED port:127.0.0.1:{down1}")
            assert first["Message-ID"] != second["Message-ID"]
        finally:
            listener.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    assert len(srv.messages()) == 2
