"""DANE (RFC 7672) rules of the maildns check: TLSA records in a real BIND on loopback against
the certificate chain a real SMTP server (aiosmtpd, STARTTLS) serves, certificates from a test
CA; OpenSSL's DANE verification decides the match."""

from __future__ import annotations

import hashlib
import ssl
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.maildns import MailDnsCheck, MailDnsOptions
from checks.maildns.dane import association, spki
from tests.dnsserver import bind_server, named_missing, zone_text
from tests.mailserver import MailServer, make_ca
from tests.tlsservers import issue_cert

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")

HOSTS = ("ok", "ta", "wrong", "pin", "renew", "many", "unusable", "partial", "none", "plain")


def _der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _zone(leaf: bytes, ca: bytes) -> str:
    body = [f"{h} MX 10 mail.{h}\nmail.{h} A 127.0.0.1" for h in HOSTS]
    body.append("partial MX 20 backup.partial\nbackup.partial A 127.0.0.1")
    key = association(leaf, 1, 1)
    body.append(f"""
_25._tcp.mail.ok TLSA 3 1 1 {key}
_25._tcp.mail.ok TLSA 3 1 1 {"ab" * 32}
_25._tcp.mail.ta TLSA 2 0 1 {association(ca, 0, 1)}
_25._tcp.mail.wrong TLSA 3 1 1 {"00" * 32}
_25._tcp.mail.pin TLSA 3 0 1 {association(leaf, 0, 1)}
_25._tcp.mail.renew TLSA 3 1 1 {key}
_25._tcp.mail.unusable TLSA 1 1 1 {key}
_25._tcp.mail.partial TLSA 3 1 1 {key}
_25._tcp.mail.plain TLSA 3 1 1 {key}
""")
    body += [f"_25._tcp.mail.many TLSA 3 1 1 {hashlib.sha256(bytes([i])).hexdigest()}"
             for i in range(100)]
    return zone_text("dane.test", "\n".join(body))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("dane")
    ca, _, _ = make_ca(d / "ca")
    sans = ",".join(f"DNS:mail.{h}.dane.test" for h in HOSTS) + ",DNS:backup.partial.dane.test"
    cert, key = issue_cert(ca, 2, "mx", sans=sans)
    renewed, _ = issue_cert(ca, 90, "mx-renewed", sans=sans)  # a new key, as certbot makes
    chain = d / "chain.pem"
    chain.write_text(cert.read_text() + ca.read_text())
    with MailServer(d, mode="starttls", cert=chain, key=key, require_starttls=False) as smtp, \
            MailServer(d, mode="plain") as plain, \
            bind_server({"dane.test": _zone(_der(cert), _der(ca))}, d / "bind") as (host, port):
        yield {"resolver": f"{host}:{port}", "port": smtp.port, "plain": plain.port,
               "cert": cert, "renewed": renewed}


def run(bed, name: str, **kw):
    kw.setdefault("resolvers", (bed["resolver"],))
    kw.setdefault("dane_port", bed["port"])
    kw.setdefault("timeout", 15.0)
    options = MailDnsOptions(domains=(f"{name}.dane.test",), **kw)
    [check] = MailDnsCheck.instances(options, Env(Config("<test>")))
    return {r.check.split(":", 2)[2]: r for r in check.run(Env(Config("<test>")))
            if r.check.split(":", 2)[2].startswith("dane")}


def test_spki_is_the_key_openssl_extracts(bed):
    import base64
    import subprocess
    pem = subprocess.run(["openssl", "x509", "-in", str(bed["cert"]), "-pubkey", "-noout"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    der = base64.b64decode("".join(ln for ln in pem.splitlines() if "-----" not in ln))
    assert spki(_der(bed["cert"])) == der


def test_dane_ee_and_ta_matching_the_served_chain_are_ok(bed):
    r = run(bed, "ok")["dane:mail.ok.dane.test"]
    assert r.status is Status.OK and r.summary == "DANE: mail.ok.dane.test matches TLSA 3 1 1"
    assert "matched TLSA 3 1 1: EE certificate at depth 0" in r.details
    assert "no staged certificate given (dane_next_certs)" in r.details
    assert "not DNSSEC-validated by the resolver (no AD bit)" in r.details
    r = run(bed, "ta")["dane:mail.ta.dane.test"]
    assert r.status is Status.OK and "matches TLSA 2 0 1" in r.summary, r
    assert "TA certificate at depth 1" in r.details


def test_tlsa_not_matching_the_certificate_is_critical_with_the_record_to_publish(bed):
    r = run(bed, "wrong")["dane:mail.wrong.dane.test"]
    assert r.status is Status.CRIT and "do not match its certificate" in r.summary
    assert association(_der(bed["cert"]), 1, 1) in r.remedy
    r = run(bed, "unusable")["dane:mail.unusable.dane.test"]
    assert r.status is Status.CRIT and "no usable TLSA record" in r.summary
    r = run(bed, "plain", dane_port=bed["plain"])["dane:mail.plain.dane.test"]
    assert r.status is Status.CRIT and "STARTTLS" in r.summary, (r.summary, r.details)


def test_renewal_that_changes_the_key_is_a_warning(bed):
    r = run(bed, "pin")["dane:mail.pin.dane.test"]
    assert r.status is Status.WARN and "breaks at every renewal" in r.summary
    host = "mail.renew.dane.test"
    r = run(bed, "renew", dane_next_certs={host: str(bed["renewed"])})[f"dane:{host}"]
    assert r.status is Status.WARN and "has another key" in r.summary, r
    assert association(_der(bed["renewed"]), 1, 1) in r.remedy
    r = run(bed, "renew", dane_next_certs={host: str(bed["cert"])})[f"dane:{host}"]
    assert r.status is Status.OK, r
    r = run(bed, "renew", dane_next_certs={host: "/nonexistent.pem"})[f"dane:{host}"]
    assert r.status is Status.UNKNOWN and "/nonexistent.pem" in r.summary


def test_partial_and_absent(bed):
    r = run(bed, "partial")
    assert r["dane:mail.partial.dane.test"].status is Status.OK
    assert r["dane"].status is Status.WARN and "none at backup.partial.dane.test" in \
        r["dane"].summary
    r = run(bed, "none")["dane"]
    assert r.status is Status.OK and "DANE not used" in r.summary


def test_a_hundred_tlsa_records_give_a_bounded_result(bed):
    t0 = time.monotonic()
    r = run(bed, "many")["dane:mail.many.dane.test"]
    assert r.status is Status.CRIT and "100 record(s)" in r.details
    assert len(r.details) < 3000 and time.monotonic() - t0 < 10
