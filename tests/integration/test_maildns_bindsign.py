"""BIND's own signing state (maildns:<domain>:bind-dnssec) read by the real rndc from a real
named on loopback with a control channel of its own (rndc-confgen key, loopback port): a zone
BIND signs itself under dnssec-policy, zones signed offline by dnssec-signzone (valid for
long, expiring soon, and, with the clock moved on, expired), an unsigned zone, a zone named
does not serve, a wrong rndc key, and an "rndc" that hangs (a loopback port that accepts and
never answers)."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.system.clock import Clock
from checks.maildns import MailDnsCheck, MailDnsOptions
from tests.dnssecbed import sign
from tests.dnsserver import bind_server, named_missing, rndc_setup, zone_text

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")


def _zone(origin: str) -> str:
    return zone_text(origin, "@ MX 10 mail\nmail A 127.0.0.1\n")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("bindsign")
    auth = d / "auth"
    controls, rndc = rndc_setup(auth)
    zones = {"auto.test": _zone("auto.test"),
             "offline.test": sign(d, "offline.test", _zone("offline.test")),
             "soon.test": sign(d, "soon.test", _zone("soon.test"), expire="now+172800"),
             "plain.test": _zone("plain.test")}
    policy = {"auto.test": f'dnssec-policy default; inline-signing yes; key-directory "{auth}";'}
    with bind_server(zones, auth, zone_options=policy, controls=controls) as (host, port):
        deadline = time.monotonic() + 30
        while "secure: yes" not in subprocess.run([*rndc, "zonestatus", "auto.test"],
                                                  capture_output=True, text=True,
                                                  timeout=10, check=False).stdout:
            assert time.monotonic() < deadline, "named did not sign auto.test"
            time.sleep(0.2)
        yield {"resolver": f"{host}:{port}", "rndc": rndc, "dir": d}


def run(bed, domain: str, clock: Clock | None = None, **kw):
    kw.setdefault("resolvers", (bed["resolver"],))
    kw.setdefault("rndc", tuple(bed["rndc"]))
    options = MailDnsOptions(domains=(domain,), dane_port=1, mta_sts_port=1, **kw)
    env = Env(Config("<test>"), clock=clock or Clock())
    [check] = MailDnsCheck.instances(options, env)
    return {r.check.split(":", 2)[2]: r for r in check.run(env)}


def test_zone_bind_signs_itself(bed):
    # the resolver is this named itself: auto mode reads its signing state
    r = run(bed, "auto.test")["bind-dnssec"]
    assert r.status is Status.OK, (r.summary, r.details)
    assert r.summary.startswith("BIND signs auto.test itself (dnssec-policy default; keys ")
    assert " CSK ECDSAP256SHA256" in r.summary and "next key event " in r.summary
    assert "key maintenance automatic" in r.details and "inline signing yes" in r.details
    assert "RRSIG SOA auto.test" in r.details


def test_offline_signed_zones(bed):
    r = run(bed, "offline.test")["bind-dnssec"]
    assert r.status is Status.OK and "signed offline (key maintenance: none): nothing " \
        "re-signs it; its signatures expire in 30.0 days" in r.summary, r.summary
    soon = run(bed, "soon.test")["bind-dnssec"]
    assert soon.status is Status.WARN and "expire in 2.0 days" in soon.summary, soon.summary
    assert "dnssec-policy default;" in soon.remedy
    assert run(bed, "soon.test", dnssec_expiry_warn=1.0)["bind-dnssec"].status is Status.OK
    # three days on (dnssec-signzone refuses to sign with an end in the past)
    class Later(Clock):
        def now(self) -> float:
            return time.time() + 3 * 86400

    gone = run(bed, "soon.test", clock=Later())["bind-dnssec"]
    assert gone.status is Status.CRIT and "has expired" in gone.summary, gone.summary


def test_unsigned_and_unknown_zones(bed):
    r = run(bed, "plain.test")["bind-dnssec"]
    assert r.status is Status.WARN and r.summary == "this appliance's BIND serves plain.test " \
        "unsigned"
    assert 'to zone "plain.test" in named.conf' in r.remedy
    r = run(bed, "other.test", bind_signing="yes")["bind-dnssec"]
    assert r.status is Status.UNKNOWN and "not found" in r.summary, r.summary
    assert "add a zone statement for other.test" in r.remedy
    # not this appliance's zone and not asked for: no such result
    assert "bind-dnssec" not in run(bed, "other.test")
    assert "bind-dnssec" not in run(bed, "auto.test", bind_signing="no")


def test_wrong_key_and_a_hanging_rndc(bed, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text('key "steward-test" { algorithm hmac-sha256; secret '
                   '"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; };\n')
    argv = list(bed["rndc"])
    argv[argv.index("-k") + 1] = str(bad)
    r = run(bed, "auto.test", rndc=tuple(argv))["bind-dnssec"]
    assert r.status is Status.UNKNOWN and r.summary.startswith("rndc zonestatus auto.test: ")
    assert "controls statement" in r.remedy, r
    # a control port that accepts and never answers: rndc waits, steward does not
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        argv = list(bed["rndc"])
        argv[argv.index("-p") + 1] = str(silent.getsockname()[1])
        t0 = time.monotonic()
        r = run(bed, "auto.test", rndc=tuple(argv), rndc_timeout=1.0)["bind-dnssec"]
        elapsed = time.monotonic() - t0
    finally:
        silent.close()
    assert r.status is Status.UNKNOWN and r.summary.endswith("did not answer within 1 s"), r
    assert elapsed < 10, elapsed
