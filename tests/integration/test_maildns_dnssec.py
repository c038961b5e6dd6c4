"""DNSSEC rule of the maildns check: zones signed with dnssec-signzone served by a real BIND on
loopback, asked through a second named that validates with the parent zone's KSK as its trust
anchor: secure, expiring signatures, no DS, a DS matching no key, unsigned with TLSA."""

from __future__ import annotations

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.maildns import MailDnsCheck, MailDnsOptions
from tests.dnssecbed import ds_lines, ds_of, keygen, ksk_anchor, sign, validating_resolver
from tests.dnsserver import bind_server, named_missing, zone_text

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")

PARENT = "p.test"
CHILDREN = ("good", "expiring", "nods", "badds", "unsigned")


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("dnssec")
    zones = {}
    delegations = []
    for c in CHILDREN:
        origin = f"{c}.{PARENT}"
        body = f"@ MX 10 mail\nmail A 127.0.0.1\n_25._tcp.mail TLSA 3 1 1 {'ab' * 32}\n"
        text = zone_text(origin, body)
        delegations.append(f"{c} NS ns.{PARENT}.")
        if c == "unsigned":
            zones[origin] = text
            continue
        zones[origin] = sign(d, origin, text,
                             expire="now+259200" if c == "expiring" else "now+2592000")
        if c == "badds":
            spare = keygen(d / origin, origin, ksk=True)
            spare_ds = ds_of(spare, origin)
            spare.unlink()
            spare.with_suffix(".private").unlink()
            delegations.append(spare_ds.replace(f"{origin}.", c, 1))
        elif c != "nods":
            delegations.append(ds_lines(d, origin).replace(f"{origin}.", c))
    zones[PARENT] = sign(d, PARENT, zone_text(PARENT, "\n".join(delegations)))
    with bind_server(zones, d / "auth") as (_, auth_port), \
            validating_resolver(d / "resolver", auth_port, PARENT, ksk_anchor(d, PARENT)) \
            as (host, port):
        yield {"resolver": f"{host}:{port}", "auth": f"127.0.0.1:{auth_port}"}


def run_all(bed, name: str, **kw):
    kw.setdefault("resolvers", (bed["resolver"],))
    kw.setdefault("dane_port", 1)  # the MX is 127.0.0.1: refused at once
    options = MailDnsOptions(domains=(f"{name}.{PARENT}",), **kw)
    [check] = MailDnsCheck.instances(options, Env(Config("<test>")))
    return {r.check.split(":", 2)[2]: r for r in check.run(Env(Config("<test>")))}


def run(bed, name: str, **kw):
    return run_all(bed, name, **kw)["dnssec"]


def test_signed_zone_with_matching_ds_validates(bed):
    r = run(bed, "good")
    assert r.status is Status.OK, (r.summary, r.details)
    assert "validates (AD), DS matches" in r.summary
    assert "DS matching a DNSKEY: 1 of 1" in r.details and "RRSIG SOA good.p.test" in r.details
    dane = run_all(bed, "good")["dane:mail.good.p.test"]
    assert "_25._tcp.mail.good.p.test: DNSSEC-validated (AD bit)" in dane.details


def test_signatures_expiring_within_the_window_warn(bed):
    r = run(bed, "expiring")
    assert r.status is Status.WARN and "expires in 3.0 days (under 7)" in r.summary, r.summary
    assert "re-sign the zone expiring.p.test" in r.remedy
    assert run(bed, "expiring", dnssec_expiry_warn=2.0).status is Status.OK


def test_signed_without_ds_is_insecure(bed):
    r = run(bed, "nods")
    assert r.status is Status.WARN and "parent has no DS" in r.summary, (r.summary, r.details)
    assert "nods.p.test. DS " in r.remedy and " 13 2 " in r.remedy
    assert "count for nothing without DNSSEC" in r.details


def test_ds_matching_no_key_is_bogus(bed):
    r = run(bed, "badds")
    assert r.status is Status.CRIT and "fails (bogus)" in r.summary, (r.summary, r.details)
    assert "no DS at the parent matches a DNSKEY" in r.summary
    assert "replace the DS at the parent (registrar) with badds.p.test. DS" in r.remedy


def test_unsigned_zone_and_non_validating_resolver(bed):
    r = run(bed, "unsigned")
    assert r.status is Status.WARN and "not signed (no DNSKEY)" in r.summary
    assert "TLSA records at mail.unsigned.p.test count for nothing" in r.details
    # the authoritative server sets no AD bit: steward says the resolver does not validate
    r = run(bed, "good", resolvers=(bed["auth"],))
    assert r.status is Status.UNKNOWN and "the resolver does not validate" in r.summary
