"""Mail delivery against real SMTP servers on loopback: plain, STARTTLS, SMTPS, AUTH, relay
fallback, and the refusals (wrong CA, no STARTTLS, AUTH in clear, readable password file)."""

from __future__ import annotations

import logging
import socket
from email.message import EmailMessage

import pytest

from agent.notify.smtp import Relay, RelayResult, SmtpSender, parse_relay
from tests.mailserver import MailServer, free_port, make_ca

TEXT = "Disk /var is 97% full.\nRemedy: journalctl --vacuum-size=200M — Grüße\n"
# aiosmtpd warns when a server takes AUTH without requiring TLS: the helper's SMTPS servers
# (aiosmtpd does not count implicit TLS as TLS) and the careless server of the AUTH-in-clear test.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
HTML = "<p>Disk <b>/var</b> is 97% full.</p><p>Grüße</p>\n"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("other-ca"))[0]


def alert() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "steward@box.example"
    msg["To"] = "admin@example.org"
    msg["Cc"] = "ops@example.org"
    msg["Subject"] = "[steward] box: disk CRITICAL"
    msg.set_content(TEXT)
    msg.add_alternative(HTML, subtype="html")
    return msg


def sender(*relays: str, **kw) -> SmtpSender:
    kw.setdefault("timeout", 5)
    return SmtpSender(relays, local_hostname="steward.test", **kw)


def password_file(tmp_path, text="s3cret\n", mode=0o600):
    path = tmp_path / "smtp-password"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_plain_delivery_arrives_whole(tmp_path):
    with MailServer(tmp_path) as srv:
        results = sender(f"smtp://127.0.0.1:{srv.port}").send(alert())
        assert [r.ok for r in results] == [True]
        [got] = srv.messages()
        [env] = srv.received
    assert env.mail_from == "steward@box.example"
    assert sorted(env.rcpt_tos) == ["admin@example.org", "ops@example.org"]
    assert not env.tls and env.login is None
    assert got["Subject"] == "[steward] box: disk CRITICAL"
    assert got["To"] == "admin@example.org" and got["Cc"] == "ops@example.org"
    assert got.get_content_type() == "multipart/alternative"
    assert got.get_body(("plain",)).get_content() == TEXT
    assert got.get_body(("html",)).get_content() == HTML


def test_plain_means_plain_even_when_starttls_is_offered(tmp_path, pki):
    ca, cert, key = pki
    with MailServer(tmp_path, mode="starttls", cert=cert, key=key, require_starttls=False) as srv:
        results = sender(f"smtp://127.0.0.1:{srv.port}", ca_file=str(ca)).send(alert())
        assert results[-1].ok
        assert [r.tls for r in srv.received] == [False]


@pytest.mark.parametrize(("mode", "scheme", "host"), [
    ("starttls", "smtp+starttls", "127.0.0.1"),
    ("starttls", "smtp+starttls", "localhost"),   # DNS name in the certificate, not only IP
    ("smtps", "smtps", "127.0.0.1"),
])
def test_tls_verified_with_test_ca(tmp_path, pki, mode, scheme, host):
    ca, cert, key = pki
    with MailServer(tmp_path, mode=mode, cert=cert, key=key) as srv:
        results = sender(f"{scheme}://{host}:{srv.port}", ca_file=str(ca)).send(alert())
        assert [r.ok for r in results] == [True], results
        assert [r.tls for r in srv.received] == [True]
        assert srv.messages()[0].get_body(("plain",)).get_content() == TEXT


@pytest.mark.parametrize(("mode", "scheme"), [("starttls", "smtp+starttls"), ("smtps", "smtps")])
def test_auth_over_tls_reads_password_at_each_send(tmp_path, pki, mode, scheme):
    ca, cert, key = pki
    pw = password_file(tmp_path, "old-password\n")
    with MailServer(tmp_path, mode=mode, cert=cert, key=key, auth={"steward": "s3cret"}) as srv:
        s = sender(f"{scheme}://127.0.0.1:{srv.port}", ca_file=str(ca),
                   username="steward", password_file=pw)
        [bad] = s.send(alert())
        assert not bad.ok and bad.detail.startswith("535"), bad
        assert srv.received == []
        password_file(tmp_path, "s3cret\n")  # rotated: the same sender picks it up
        [good] = s.send(alert())
        assert good.ok, good
        assert [(r.login, r.tls) for r in srv.received] == [("steward", True)]


@pytest.mark.parametrize(("mode", "scheme"), [("starttls", "smtp+starttls"), ("smtps", "smtps")])
def test_wrong_ca_is_refused(tmp_path, pki, other_ca, mode, scheme):
    _, cert, key = pki
    with MailServer(tmp_path, mode=mode, cert=cert, key=key) as srv:
        [res] = sender(f"{scheme}://127.0.0.1:{srv.port}", ca_file=str(other_ca)).send(alert())
        assert not res.ok
        assert res.detail.startswith("certificate verify failed"), res.detail
        assert srv.received == []


def test_starttls_required_no_plaintext_fallback(tmp_path, pki):
    ca, _, _ = pki
    with MailServer(tmp_path) as srv:
        [res] = sender(f"smtp+starttls://127.0.0.1:{srv.port}", ca_file=str(ca)).send(alert())
        assert not res.ok and "does not offer STARTTLS" in res.detail
        assert srv.received == []


def test_first_relay_down_second_used(tmp_path, caplog):
    dead = f"smtp://127.0.0.1:{free_port()}"
    with MailServer(tmp_path) as srv, caplog.at_level(logging.WARNING, "agent.notify.smtp"):
        live = f"smtp://127.0.0.1:{srv.port}"
        results = sender(dead, live).send(alert())
        assert len(srv.received) == 1
    assert results[0] == RelayResult(dead, False, "connection refused")
    assert results[1].relay == live and results[1].ok
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"mail relay {dead} failed: connection refused")]


def test_silent_server_times_out_and_next_relay_is_used(tmp_path):
    with socket.socket() as mute, MailServer(tmp_path) as srv:
        mute.bind(("127.0.0.1", 0))
        mute.listen()  # accepts connections (kernel backlog) but never says 220
        results = sender(f"smtp://127.0.0.1:{mute.getsockname()[1]}",
                         f"smtp://127.0.0.1:{srv.port}", timeout=0.3).send(alert())
        assert [(r.ok, r.detail) for r in results] == [(False, "timed out"), (True, "250 accepted")]


def test_refused_recipient_fails_relay_and_next_is_tried(tmp_path):
    with MailServer(tmp_path, refuse=("ops@example.org",)) as picky, MailServer(tmp_path) as good:
        results = sender(f"smtp://127.0.0.1:{picky.port}",
                         f"smtp://127.0.0.1:{good.port}").send(alert())
        assert [r.ok for r in results] == [False, True]
        assert results[0].detail == ("recipient refused: ops@example.org: "
                                     "550 5.1.1 no such user here")
        assert sorted(good.received[0].rcpt_tos) == ["admin@example.org", "ops@example.org"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_password_file_readable_by_others_is_refused(tmp_path, pki, mode):
    ca, cert, key = pki
    pw = password_file(tmp_path, mode=mode)
    with MailServer(tmp_path, mode="starttls", cert=cert, key=key,
                    auth={"steward": "s3cret"}) as srv:
        [res] = sender(f"smtp+starttls://127.0.0.1:{srv.port}", ca_file=str(ca),
                       username="steward", password_file=pw).send(alert())
        assert not res.ok
        assert res.detail.startswith("refusing a password file others can read")
        assert pw in res.detail and f"{mode:04o}" in res.detail
        assert srv.received == []


def test_password_file_must_be_regular(tmp_path):
    [res] = sender("smtps://127.0.0.1:1", username="u", password_file=str(tmp_path)).send(alert())
    assert not res.ok and "not a regular file" in res.detail


def test_non_ascii_password_is_a_failure_not_a_crash_nor_a_leak(tmp_path, pki):
    ca, cert, key = pki
    with MailServer(tmp_path, mode="starttls", cert=cert, key=key,
                    auth={"steward": "s3cret"}) as srv:
        [res] = sender(f"smtp+starttls://127.0.0.1:{srv.port}", ca_file=str(ca), username="steward",
                       password_file=password_file(tmp_path, "pässwörd\n")).send(alert())
        assert not res.ok and "unusable text" in res.detail
        assert "ä" not in res.detail and "ö" not in res.detail
        assert srv.received == []


def test_auth_never_over_plain_smtp(tmp_path):
    with MailServer(tmp_path, auth={"steward": "s3cret"}, auth_require_tls=False) as srv:
        [res] = sender(f"smtp://127.0.0.1:{srv.port}", username="steward",
                       password_file=password_file(tmp_path)).send(alert())
        assert not res.ok and "unencrypted" in res.detail
        assert srv.received == []


@pytest.mark.parametrize(("url", "relay"), [
    ("smtp://mail.example.com", Relay("smtp://mail.example.com", "smtp", "mail.example.com", 25)),
    ("smtp+starttls://mail.example.com", Relay("smtp+starttls://mail.example.com",
                                               "smtp+starttls", "mail.example.com", 587)),
    ("smtps://mail.example.com/", Relay("smtps://mail.example.com/", "smtps", "mail.example.com",
                                        465)),
    ("smtp+starttls://mx:2525", Relay("smtp+starttls://mx:2525", "smtp+starttls", "mx", 2525)),
    ("SMTPS://[2001:db8::1]:4650", Relay("SMTPS://[2001:db8::1]:4650", "smtps", "2001:db8::1",
                                         4650)),
    ("smtp://[::1]", Relay("smtp://[::1]", "smtp", "::1", 25)),
])
def test_parse_relay_good(url, relay):
    assert parse_relay(url) == relay


@pytest.mark.parametrize(("url", "reason"), [
    ("http://mail.example.com", "scheme"),
    ("smtp+tls://mail.example.com", "scheme"),
    ("mail.example.com:25", "scheme"),
    ("smtp://", "no host"),
    ("smtps://:465", "no host"),
    ("smtp://mail.example.com:port", "port"),
    ("smtp://mail.example.com:70000", "(?i)port"),
    ("smtp://mail.example.com:0", "port"),
    ("smtp://[::1:25", "IPv6"),
    ("smtp://mail.example.com/relay", "path"),
    ("smtp://mail.example.com?tls=1", "query"),
    ("smtps://user:pw@mail.example.com", "credentials"),
])
def test_parse_relay_bad(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_relay(url)


def test_sender_rejects_bad_config():
    with pytest.raises(ValueError, match="no SMTP relay"):
        SmtpSender([])
    with pytest.raises(ValueError, match="password_file"):
        SmtpSender(["smtps://mx"], username="u")
    with pytest.raises(ValueError, match="scheme"):
        SmtpSender(["smtp://ok", "ftp://nope"])

