"""MTA-STS and TLS-RPT rules of the maildns check against a real BIND on loopback and real
HTTPS servers (certificates from a test CA) serving good, wrong and hostile policies."""

from __future__ import annotations

import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.maildns import MailDnsCheck, MailDnsOptions
from tests.dnsserver import bind_server, named_missing, txt, zone_text
from tests.mailserver import make_ca
from tests.tlsservers import Page, WebServer, issue_cert

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")

NAMES = ("enforce", "testing", "mismatch", "notfound", "redirect", "huge", "badpolicy",
         "wrongcert", "html")
GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.{d}\r\nmx: *.{d}\r\nmax_age: 604800\r\n"
POLICIES = {
    "enforce": Page(body=GOOD, headers={"Content-Type": "text/plain"}),
    "testing": Page(body="version: STSv1\nmode: testing\nmx: *.{d}\nmax_age: 86400\n",
                    headers={"Content-Type": "text/plain; charset=utf-8"}),
    "mismatch": Page(body="version: STSv1\nmode: enforce\nmx: mail.elsewhere.test\n"
                     "max_age: 604800\n", headers={"Content-Type": "text/plain"}),
    "notfound": Page(404, "no such file"),
    "redirect": Page(301, "", headers={"Location": "https://elsewhere.test/p"}),
    "huge": Page(body="version: STSv1\nmode: enforce\n" + "mx: a.huge.sts.test\n" * 5000,
                 headers={"Content-Type": "text/plain"}),
    "badpolicy": Page(body="mode: sometimes\nversion: STSv2\nmax_age: -1\n",
                      headers={"Content-Type": "text/plain"}),
    "wrongcert": Page(body=GOOD, headers={"Content-Type": "text/plain"}),
    "html": Page(body=GOOD, headers={"Content-Type": "text/html"}),
}


def _zone() -> str:
    body = []
    for n in NAMES:
        body.append(f"{n} MX 10 mail.{n}\n{n} MX 20 backup.{n}\nmail.{n} A 192.0.2.10\n"
                    f"backup.{n} A 192.0.2.11\n_mta-sts.{n} TXT \"v=STSv1; id=20261207T1\"\n"
                    f"mta-sts.{n} A 127.0.0.1\n")
    body.append("""
noaddr MX 10 mail.noaddr
mail.noaddr A 192.0.2.10
_mta-sts.noaddr TXT "v=STSv1; id=1"
none MX 10 mail.none
mail.none A 192.0.2.10
_mta-sts.two TXT "v=STSv1; id=1"
_mta-sts.two TXT "v=STSv1; id=2"
_mta-sts.badid TXT "v=STSv1; id=not-alnum!"
_mta-sts.loop CNAME _mta-sts.loop2
_mta-sts.loop2 CNAME _mta-sts.loop
_smtp._tls.enforce TXT "v=TLSRPTv1; rua=mailto:tls@enforce.sts.test,https://r.sts.test/tls?x=1"
_smtp._tls.two TXT "v=TLSRPTv1; rua=mailto:a@two.sts.test"
_smtp._tls.two TXT "v=TLSRPTv1; rua=mailto:b@two.sts.test"
_smtp._tls.ftp TXT "v=TLSRPTv1; rua=ftp://r.sts.test/"
_smtp._tls.norua TXT "v=TLSRPTv1; ruf=mailto:a@norua.sts.test"
_smtp._tls.order TXT "rua=mailto:a@order.sts.test; v=TLSRPTv1"
_smtp._tls.loop CNAME _smtp._tls.loop2
_smtp._tls.loop2 CNAME _smtp._tls.loop
""")
    # A TXT of ~60 kB: fetched over TCP after truncation; must end in a bounded result
    body.append(f"_mta-sts.bigtxt TXT {txt('v=STSv1; id=' + 'x' * 60000)}\n")
    body.append(f"_smtp._tls.bigtxt TXT {txt('v=TLSRPTv1; rua=mailto:' + 'x' * 60000)}\n")
    return zone_text("sts.test", "\n".join(body))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtasts")
    ca, _, _ = make_ca(d / "ca")
    sans = ",".join(f"DNS:mta-sts.{n}.sts.test" for n in NAMES if n != "wrongcert")
    cert, key = issue_cert(ca, 2, "mta-sts", sans=sans)
    other, other_key = issue_cert(ca, 2, "other", sans="DNS:mta-sts.elsewhere.test")
    servers = {}
    try:
        for n in NAMES:
            page = POLICIES[n]
            page = Page(page.status, page.body.replace("{d}", f"{n}.sts.test"), page.headers)
            c, k = (other, other_key) if n == "wrongcert" else (cert, key)
            servers[n] = WebServer({"/.well-known/mta-sts.txt": page}, cert=c, key=k)
        with bind_server({"sts.test": _zone()}, d / "bind") as (host, port):
            yield {"resolver": f"{host}:{port}", "ca": str(ca), "servers": servers}
    finally:
        for s in servers.values():
            s.stop()


def run(bed, name: str, rule: str, **kw):
    kw.setdefault("resolvers", (bed["resolver"],))
    kw.setdefault("mta_sts_ca", bed["ca"])
    if name in bed["servers"]:
        kw.setdefault("mta_sts_port", bed["servers"][name].port)
    kw.setdefault("timeout", 10.0)
    options = MailDnsOptions(domains=(f"{name}.sts.test",), **kw)
    [check] = MailDnsCheck.instances(options, Env(Config("<test>")))
    return {r.check.split(":", 2)[2]: r for r in check.run(Env(Config("<test>")))}[rule]


def test_enforced_policy_covering_every_mx_is_ok(bed):
    r = run(bed, "enforce", "mta-sts")
    assert r.status is Status.OK, r
    assert "enforce" in r.summary and "max_age 604800" in r.summary
    assert "_mta-sts.enforce.sts.test TXT v=STSv1; id=20261207T1" in r.details
    assert "mx: *.enforce.sts.test" in r.details


def test_policy_host_certificate_is_verified(bed):
    # the system trust store does not know the test CA
    r = run(bed, "enforce", "mta-sts", mta_sts_ca=None)
    assert r.status is Status.CRIT and "certificate of mta-sts.enforce.sts.test" in r.summary
    r = run(bed, "wrongcert", "mta-sts")
    assert r.status is Status.CRIT and "not valid" in r.summary, r
    assert "certificate valid for mta-sts.wrongcert.sts.test" in r.remedy


def test_testing_mode_is_a_warning(bed):
    r = run(bed, "testing", "mta-sts")
    assert r.status is Status.WARN and "mode: testing" in r.summary
    assert "set mode: enforce" in r.remedy


def test_mx_not_covered_by_an_enforced_policy_is_critical(bed):
    r = run(bed, "mismatch", "mta-sts")
    assert r.status is Status.CRIT, r
    assert "mail.mismatch.sts.test, backup.mismatch.sts.test match no mx" in r.summary
    assert "mx: mail.mismatch.sts.test" in r.remedy


def test_record_without_reachable_policy_is_critical(bed):
    r = run(bed, "notfound", "mta-sts")
    assert r.status is Status.CRIT and "HTTP 404" in r.summary
    r = run(bed, "redirect", "mta-sts")
    assert r.status is Status.CRIT and "HTTP 301" in r.summary
    assert "redirects are not followed" in r.remedy
    r = run(bed, "noaddr", "mta-sts")
    assert r.status is Status.CRIT and "mta-sts.noaddr.sts.test does not resolve" in r.summary
    # nothing listening on the port
    r = run(bed, "enforce", "mta-sts", mta_sts_port=1)
    assert r.status is Status.CRIT and "cannot connect to 127.0.0.1 port 1" in r.summary


def test_bad_policies_and_records(bed):
    r = run(bed, "badpolicy", "mta-sts")
    assert r.status is Status.CRIT and "policy is invalid" in r.summary
    assert "mode: sometimes" in r.summary and "version: STSv2" in r.summary
    assert "version is not the first line" in r.summary
    r = run(bed, "html", "mta-sts")
    assert r.status is Status.WARN and "text/html is not text/plain" in r.summary
    r = run(bed, "two", "mta-sts")
    assert r.status is Status.CRIT and "2 v=STSv1 records" in r.summary
    r = run(bed, "badid", "mta-sts")
    assert r.status is Status.CRIT and "id=not-alnum! is not 1 to 32" in r.summary
    r = run(bed, "none", "mta-sts")
    assert r.status is Status.WARN and "publishes no MTA-STS policy" in r.summary
    assert '_mta-sts.none.sts.test. TXT "v=STSv1; id=' in r.remedy


def test_hostile_answers_are_bounded(bed):
    t0 = time.monotonic()
    r = run(bed, "huge", "mta-sts")
    assert r.status is Status.CRIT and "over 64 kB: refused" in r.summary
    r = run(bed, "bigtxt", "mta-sts")
    assert r.status is Status.CRIT and "is not 1 to 32 letters" in r.summary
    assert len(r.details) < 2000
    r = run(bed, "bigtxt", "tls-rpt")
    assert r.status is Status.CRIT and "is not a mailto: or https: URI" in r.summary
    assert len(r.summary) < 300 and len(r.details) < 2000
    for rule in ("mta-sts", "tls-rpt"):
        r = run(bed, "loop", rule, query_timeout=1.0)
        assert r.status is Status.CRIT and "CNAME loop at " in r.summary, r
        assert "loop2.sts.test -> _" in r.summary and "CNAME chain" in r.remedy
    assert time.monotonic() - t0 < 20


def test_tlsrpt(bed):
    r = run(bed, "enforce", "tls-rpt")
    assert r.status is Status.OK
    assert r.summary == ("TLS reports go to mailto:tls@enforce.sts.test, "
                         "https://r.sts.test/tls?x=1")
    cases = {"two": "2 v=TLSRPTv1 records", "ftp": "'ftp://r.sts.test/' is not a mailto:",
             "norua": "no rua= field", "order": "v=TLSRPTv1 is not the first field"}
    for name, text in cases.items():
        r = run(bed, name, "tls-rpt")
        assert r.status is Status.CRIT and text in r.summary, (name, r)
    r = run(bed, "none", "tls-rpt")
    assert r.status is Status.WARN and "no TLS-RPT record" in r.summary
    assert r.remedy == 'publish _smtp._tls.none.sts.test. TXT ' \
        '"v=TLSRPTv1; rua=mailto:tls-reports@none.sts.test"'

