"""SMTP, IMAP and POP3 probes against real servers on loopback: aiosmtpd (plain, STARTTLS,
SMTPS) and Dovecot (IMAP/POP3 with STARTTLS and implicit TLS), with a throwaway CA."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agent.config import Config
from agent.config.schema import ConfigError, build
from agent.env import Env
from agent.model import Status
from checks.protocols import (
    ImapCheck,
    ImapOptions,
    Pop3Check,
    Pop3Options,
    SmtpCheck,
    SmtpOptions,
)
from checks.tlsinfo import DAY, CertInfo, judge_cert, name_matches
from tests.clocks import FakeClock
from tests.mailserver import MailServer, free_port, make_ca
from tests.tlsservers import Dovecot, have_dovecot, issue_cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, _, _ = make_ca(d / "ca")  # its own server certificate lives 2 days: CRIT
    cert, key = issue_cert(ca, 200)
    other_ca, _, _ = make_ca(d / "other")
    return {"ca": ca, "cert": cert, "key": key, "other_ca": other_ca, "dir": d}


def run(check_cls, options_cls, target, clock=None, **kw):
    env = Env(Config("<test>"), **({"clock": clock} if clock else {}))
    [r] = check_cls(options_cls(**kw), target).run(env)
    return r


def smtp(target, clock=None, **kw):
    return run(SmtpCheck, SmtpOptions, target, clock, **kw)


def metric(r, name):
    return {m.name: m for m in r.metrics}[name]


def test_smtp_starttls_with_a_valid_certificate_is_ok(pki, tmp_path):
    with MailServer(tmp_path, mode="starttls", cert=pki["cert"], key=pki["key"]) as srv:
        r = smtp(f"127.0.0.1:{srv.port}", ca_file=str(pki["ca"]))
    assert r.status is Status.OK, r
    assert "STARTTLS negotiated" in r.summary and "certificate expires in 200 days" in r.summary
    assert {"banner_time", "ehlo_time", "cert_days_left"} <= {m.name for m in r.metrics}
    assert metric(r, "banner_time").uom == "s"


def test_smtp_probe_is_linked_to_postfix_for_local_targets_only(pki, tmp_path):
    with MailServer(tmp_path, mode="starttls", cert=pki["cert"], key=pki["key"]) as srv:
        local = smtp(f"localhost:{srv.port}", ca_file=str(pki["ca"]))
        unlinked = smtp(f"localhost:{srv.port}", ca_file=str(pki["ca"]),
                        units={f"localhost:{srv.port}": ""})
    assert local.status is Status.OK, local
    assert local.unit == "postfix" and local.depends_on == ("service:postfix",)
    assert unlinked.unit == "" and unlinked.depends_on == ()


def test_smtps_implicit_tls_is_ok(pki, tmp_path):
    with MailServer(tmp_path, mode="smtps", cert=pki["cert"], key=pki["key"]) as srv:
        target = f"127.0.0.1:{srv.port}"
        r = smtp(target, ca_file=str(pki["ca"]), modes={target: "smtps"})
    assert r.status is Status.OK, r
    assert "implicit TLS" in r.summary
    assert metric(r, "cert_days_left").value > 1


def test_plain_server_where_starttls_is_required_is_critical(tmp_path):
    with MailServer(tmp_path, mode="plain") as srv:
        r = smtp(f"127.0.0.1:{srv.port}")
        plain = smtp(f"127.0.0.1:{srv.port}", modes={f"127.0.0.1:{srv.port}": "plain"})
    assert r.status is Status.CRIT
    assert "STARTTLS not offered" in r.summary and r.remedy
    assert r.restartable is False, "a restart cannot add STARTTLS"
    assert plain.status is Status.OK, plain
    assert "cert_days_left" not in {m.name for m in plain.metrics}


def test_certificate_from_another_ca_is_critical_with_the_reason(pki, tmp_path):
    with MailServer(tmp_path, mode="starttls", cert=pki["cert"], key=pki["key"]) as srv:
        r = smtp(f"127.0.0.1:{srv.port}", ca_file=str(pki["other_ca"]))
    assert r.status is Status.CRIT
    assert "certificate verify failed" in r.summary


def test_system_cas_do_not_trust_a_private_ca(pki, tmp_path):
    with MailServer(tmp_path, mode="smtps", cert=pki["cert"], key=pki["key"]) as srv:
        r = smtp(f"127.0.0.1:{srv.port}", modes={f"127.0.0.1:{srv.port}": "smtps"})
    assert r.status is Status.CRIT
    assert "certificate verify failed" in r.summary


def test_certificate_for_another_name_is_critical(pki, tmp_path):
    with MailServer(tmp_path, mode="starttls", cert=pki["cert"], key=pki["key"]) as srv:
        r = smtp(f"127.0.0.1:{srv.port}", ca_file=str(pki["ca"]),
                 tls_hostname="mail.example.com")
    assert r.status is Status.CRIT
    assert "does not name mail.example.com" in r.summary and "DNS:localhost" in r.summary


@pytest.mark.parametrize("days, status", [(5, Status.CRIT), (15, Status.WARN),
                                          (200, Status.OK)])
def test_smtp_certificate_expiry_is_judged_in_days(pki, tmp_path, days, status):
    cert, key = issue_cert(pki["ca"], days)
    with MailServer(tmp_path, mode="starttls", cert=cert, key=key) as srv:
        r = smtp(f"127.0.0.1:{srv.port}", ca_file=str(pki["ca"]))
    assert r.status is status, r
    assert f"certificate expires in {days} days" in (r.summary if days < 21 else r.details)
    if status is Status.CRIT:
        assert r.restartable is False, "a restart does not renew a certificate"


def test_the_days_left_of_the_served_certificate_are_counted_from_the_clock(pki, tmp_path):
    clock = FakeClock(time.time())  # the certificate's dates are real ones: 200 days
    with MailServer(tmp_path, mode="starttls", cert=pki["cert"], key=pki["key"]) as srv:
        target, ca = f"127.0.0.1:{srv.port}", str(pki["ca"])
        today = smtp(target, clock, ca_file=ca)
        later = smtp(target, clock.advance(days=190), ca_file=ca)
        last = smtp(target, clock.advance(days=5), ca_file=ca)
    assert today.status is Status.OK and metric(today, "cert_days_left").value == 200
    assert later.status is Status.WARN and "certificate expires in 10 days" in later.summary
    assert metric(later, "cert_days_left").value == 10
    assert last.status is Status.CRIT and "certificate expires in 5 days" in last.summary


def test_judge_cert_counts_days_from_now_against_the_ranges():
    clock = FakeClock()
    info = CertInfo("CN=x", "CN=ca", ("DNS:mail.test",), clock.now() + 30 * DAY, "1", "TLSv1.3",
                    "x")
    assert [f.status for f in judge_cert(info, "mail.test", now=clock.now())[0]] == [Status.OK]
    [found], metric_ = judge_cert(info, "mail.test", now=clock.advance(days=20).now())
    assert found.status is Status.WARN and found.text.startswith("certificate expires in 10 days")
    assert metric_.value == 10.0 and metric_.warn == "21:"
    [found], _ = judge_cert(info, "mail.test", now=clock.advance(days=7).now())
    assert found.status is Status.CRIT and found.text.startswith("certificate expires in 3 days")


def test_closed_port_is_critical():
    r = smtp(f"127.0.0.1:{free_port()}")
    assert r.status is Status.CRIT and "cannot connect" in r.summary
    assert r.restartable, "a dead listener is what a restart cures"


def test_silent_server_times_out_as_critical():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        r = smtp(f"127.0.0.1:{srv.getsockname()[1]}", connect_timeout=0.3)
    assert r.status is Status.CRIT
    assert "no answer within 0.3 s during the greeting" in r.summary
    assert r.restartable, "a hung service is what a restart cures"


def test_server_that_rejects_us_in_its_banner_is_critical():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def answer():
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"554 5.3.2 go away\r\n")
        threading.Thread(target=answer, daemon=True).start()
        r = smtp(f"127.0.0.1:{srv.getsockname()[1]}", connect_timeout=2)
    assert r.status is Status.CRIT
    assert "554" in r.summary and "go away" in r.summary


def test_plaintext_injected_after_starttls_answer_is_refused():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def answer():
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as f:
                conn.sendall(b"220 mx ESMTP\r\n")
                f.readline()
                conn.sendall(b"250-mx\r\n250 STARTTLS\r\n")
                f.readline()
                conn.sendall(b"220 go ahead\r\n250 injected\r\n")
                f.readline()
        threading.Thread(target=answer, daemon=True).start()
        r = smtp(f"127.0.0.1:{srv.getsockname()[1]}", connect_timeout=2)
    assert r.status is Status.CRIT
    assert "data after its STARTTLS answer" in r.summary


@pytest.mark.parametrize("names, host, ok", [
    (("DNS:mail.example.com",), "MAIL.example.com.", True),
    (("DNS:*.example.com",), "mail.example.com", True),
    (("DNS:*.example.com",), "a.b.example.com", False),
    (("DNS:*.com",), "example.com", False),
    (("IP Address:127.0.0.1",), "127.0.0.1", True),
    (("DNS:127.0.0.1",), "127.0.0.1", False),
    (("IP Address:0:0:0:0:0:0:0:1",), "::1", True),
    ((), "localhost", False),
])
def test_certificate_names_match_as_rfc_6125_says(names, host, ok):
    info = CertInfo("CN=x", "CN=ca", names, 0.0, "1", "TLSv1.3", "x")
    assert name_matches(info, host) is ok


# -- IMAP and POP3 against a real Dovecot ---------------------------------------------------

needs_dovecot = pytest.mark.skipif(not have_dovecot(),
                                   reason="needs root and dovecot-imapd/dovecot-pop3d")


@pytest.fixture(scope="module")
def dovecot(pki):
    with Dovecot(pki["dir"] / "dovecot", pki["cert"], pki["key"]) as dv:
        yield dv


@needs_dovecot
@pytest.mark.parametrize("check, options, port, how", [
    (ImapCheck, ImapOptions, "imap", "STARTTLS negotiated"),
    (ImapCheck, ImapOptions, "imaps", "implicit TLS"),
    (Pop3Check, Pop3Options, "pop3", "STARTTLS negotiated"),
    (Pop3Check, Pop3Options, "pop3s", "implicit TLS"),
])
def test_dovecot_is_ok_with_starttls_and_implicit_tls(dovecot, pki, check, options, port, how):
    target = f"127.0.0.1:{dovecot.ports[port]}"
    modes = {target: port} if port.endswith("s") else None
    r = run(check, options, target, ca_file=str(pki["ca"]), modes=modes)
    assert r.status is Status.OK, r
    assert how in r.summary
    assert {"greeting_time", "cert_days_left"} <= {m.name for m in r.metrics}
    assert r.unit == "dovecot" and r.depends_on == ("service:dovecot",)


@needs_dovecot
@pytest.mark.parametrize("check, options, port", [(ImapCheck, ImapOptions, "imap"),
                                                  (Pop3Check, Pop3Options, "pop3s")])
def test_dovecot_with_an_untrusted_certificate_is_critical(dovecot, pki, check, options, port):
    target = f"127.0.0.1:{dovecot.ports[port]}"
    modes = {target: port} if port.endswith("s") else None
    r = run(check, options, target, ca_file=str(pki["other_ca"]), modes=modes)
    assert r.status is Status.CRIT and "certificate verify failed" in r.summary


@needs_dovecot
def test_imap_certificate_for_another_name_is_critical(dovecot, pki):
    r = run(ImapCheck, ImapOptions, f"127.0.0.1:{dovecot.ports['imap']}",
            ca_file=str(pki["ca"]), tls_hostname="imap.example.com")
    assert r.status is Status.CRIT and "does not name imap.example.com" in r.summary


def test_pop3_server_without_stls_is_critical():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def answer():
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as f:
                conn.sendall(b"+OK ready\r\n")
                f.readline()
                conn.sendall(b"+OK\r\nUSER\r\nUIDL\r\n.\r\n")
                f.readline()
        threading.Thread(target=answer, daemon=True).start()
        r = run(Pop3Check, Pop3Options, f"127.0.0.1:{srv.getsockname()[1]}", connect_timeout=2)
    assert r.status is Status.CRIT and "STARTTLS not offered" in r.summary


def test_imap_server_saying_bye_is_critical():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def answer():
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"* BYE too many connections\r\n")
        threading.Thread(target=answer, daemon=True).start()
        r = run(ImapCheck, ImapOptions, f"127.0.0.1:{srv.getsockname()[1]}", connect_timeout=2)
    assert r.status is Status.CRIT and "BYE too many connections" in r.summary


def test_options_load_from_toml_and_refuse_unknown_modes():
    o = build(SmtpOptions, {"targets": ["localhost:465"], "modes": {"localhost:465": "smtps"},
                            "expiry_warn": "30:", "units": {"localhost:465": ""}},
              "steward.toml", "checks.smtp")
    assert o.modes == {"localhost:465": "smtps"} and o.expiry_warn.text == "30:"
    assert SmtpCheck(o, "localhost:465").mode(465) == "smtps"
    assert SmtpCheck(SmtpOptions(), "localhost:587").mode(587) == "starttls"
    assert ImapCheck(ImapOptions(), "localhost:993").mode(993) == "imaps"
    with pytest.raises(ConfigError, match="accepted"):
        build(ImapOptions, {"modes": {"localhost:143": "smtps"}}, "steward.toml", "checks.imap")


def test_discovered_targets_are_the_default_port_judged_by_the_host_name():
    env = Env(Config("<test>"))
    resolved = SmtpCheck.resolve(SmtpOptions(), env)
    # With postfix running here the default is localhost:25; without it (or without
    # systemd, as in a container) there is nothing to probe.
    assert resolved.targets in ((), ("localhost:25",))
    assert resolved.tls_hostname
    assert [c.id for c in SmtpCheck.instances(resolved, env)] == [
        f"smtp:{t}" for t in resolved.targets]
