"""Alert mail in Japanese ([notify.email] language = "ja"), rendered by the real templates and
delivered by ``steward notify test`` to a real SMTP server on loopback."""

from __future__ import annotations

from agent.events import Event
from agent.model import Status
from agent.notify.templates import Templates
from tests.conftest import run_steward
from tests.mailserver import MailServer


def test_an_alert_in_japanese_keeps_the_checks_own_words():
    item = Event("problem", "service:postfix", Status.CRIT, "postfix.service failed <x>",
                    remedy="journalctl -u postfix", since=1_700_000_000.0)
    subject, text, html = Templates(None, "ja").render([item, item], host="mail1", kind="problem",
                                                       now=1_700_000_100.0)
    assert subject == "[steward] mail1: CRIT service:postfix ほか 1 件"
    assert "  対処方法: journalctl -u postfix\n" in text and "発生時刻: " in text
    assert "postfix.service failed &lt;x&gt;" in html and "<b>対処方法:</b>" in html
    en = Templates(None, "en").render([item], host="mail1", kind="problem", now=1.0)[1]
    assert "What to do: journalctl -u postfix" in en


def test_steward_notify_test_delivers_a_japanese_mail(tmp_path):
    server = MailServer(tmp_path / "mail")
    try:
        conf = tmp_path / "steward.toml"
        conf.write_text(f'[notify.email]\nto = ["admin@example.com"]\nrelays = '
                        f'["smtp://127.0.0.1:{server.port}"]\nlanguage = "ja"\n')
        conf.chmod(0o600)
        r = run_steward("notify", "test", "--config", str(conf), "--state-dir",
                        str(tmp_path / "state"))
        assert r.returncode == 0, r.stdout + r.stderr
        [msg] = server.messages()
        body = msg.get_body(("plain",)).get_content()
        assert "の steward より" in body and "test mail from steward" in body
    finally:
        server.stop()
