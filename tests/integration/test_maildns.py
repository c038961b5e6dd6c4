"""The maildns check against a real BIND on loopback serving good and broken mail-DNS records:
every rule is shown passing and failing."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.maildns import MailDnsCheck, MailDnsOptions
from tests.dnsserver import bind_server, named_missing, txt, zone_text

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")


def _key(directory: Path, name: str, bits: int) -> tuple[Path, str]:
    """A fresh RSA private key file and the base64 DER public key DKIM publishes."""
    path = directory / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), str(bits)], check=True,
                   capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    return path, base64.b64encode(der).decode()


def _ed_key(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh Ed25519 private key (PKCS#8) and the raw base64 public key RFC 8463 publishes."""
    path = directory / f"{name}.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)],
                   check=True, capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    return path, base64.b64encode(der[-32:]).decode()


def _zones(pub: dict[str, str]) -> dict[str, str]:
    lookups_children = "".join(
        f'l{i} A 192.0.2.1\nl{i} MX 10 mail.good.test.\nl{i} TXT "v=spf1 a mx -all"\n'
        for i in (1, 2, 3))
    return {
        "good.test": zone_text("good.test", f"""
@ MX 10 mail
mail A 192.0.2.10
@ TXT "v=spf1 mx ip4:192.0.2.0/28 include:_spf.good.test -all"
@ TXT "google-site-verification=unrelated"
_spf TXT "v=spf1 ip4:198.51.100.0/24 ~all"
_dmarc TXT ( "v=DMARC1; p=reject; rua=mailto:dmarc@good.test,mailto:agg@reports.test;"
              " ruf=mailto:forensic@good.test; adkim=s; aspf=r; pct=100; fo=1; ri=86400" )
s2048._domainkey TXT {txt("v=DKIM1; k=rsa; p=" + pub["k2048"])}
s1024._domainkey TXT {txt("v=DKIM1; k=rsa; p=" + pub["k1024"])}
s512._domainkey TXT {txt("v=DKIM1; k=rsa; p=" + pub["k512"])}
mismatch._domainkey TXT {txt("v=DKIM1; k=rsa; p=" + pub["other"])}
revoked._domainkey TXT "v=DKIM1; k=rsa; p="
ed._domainkey TXT "v=DKIM1; k=ed25519; p={pub['ed']}"
edwrong._domainkey TXT "v=DKIM1; k=ed25519; p={pub['ed_other']}"
garbage._domainkey TXT "v=DKIM1; k=rsa; p=!!!notbase64"
"""),
        "bad.test": zone_text("bad.test", f"""
nospf MX 10 mail.good.test.
lookups A 192.0.2.1
lookups MX 10 mail.good.test.
lookups TXT "v=spf1 a mx include:l1.bad.test include:l2.bad.test include:l3.bad.test -all"
{lookups_children}
void TXT "v=spf1 a:nx1.bad.test a:nx2.bad.test mx:nx3.bad.test ip4:192.0.2.1 -all"
loop TXT "v=spf1 include:loop2.bad.test -all"
loop2 TXT "v=spf1 include:loop.bad.test -all"
two TXT "v=spf1 -all"
two TXT "v=spf1 mx -all"
plusall TXT "v=spf1 +all"
qall TXT "v=spf1 ip4:192.0.2.1 ?all"
syntax TXT "v=spf1 ip4:999.1.1.1 -all"
mxnoaddr MX 10 ghost.bad.test.
_dmarc.badtags TXT "v=DMARC1; p=maybe; pct=150; adkim=x"
nomx A 192.0.2.5
twoinc MX 10 mail.good.test.
twoinc TXT "v=spf1 include:_spf.good.test ip4:192.0.2.0/28 -all"
twoinc TXT "v=spf1 mx ~all"
_dmarc.none TXT "v=DMARC1; p=none; rua=mailto:d@none.bad.test"
_dmarc.unauth TXT "v=DMARC1; p=reject; rua=mailto:agg@reports.test"
_dmarc.two TXT "v=DMARC1; p=reject"
_dmarc.two TXT "v=DMARC1; p=none"
"""),
        "reports.test": zone_text("reports.test", 'good.test._report._dmarc TXT "v=DMARC1"'),
        "bl.test": zone_text("bl.test", '12.2.0.192 A 127.0.0.2\n'
                             '12.2.0.192 TXT "spam seen, see https://bl.test/q?12"'),
        "2.0.192.in-addr.arpa": zone_text("2.0.192.in-addr.arpa",
                                          "10 PTR mail.good.test.\n11 PTR nofwd.good.test."),
    }


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    d = tmp_path_factory.mktemp("maildns")
    keys, pub = {}, {}
    for name, bits in (("k2048", 2048), ("k1024", 1024), ("k512", 512), ("other", 2048)):
        keys[name], pub[name] = _key(d, name, bits)
    for name in ("ed", "ed_other"):
        keys[name], pub[name] = _ed_key(d, name)
    with bind_server(_zones(pub), d / "bind") as (host, port):
        yield {"resolver": f"{host}:{port}", "keys": keys, "dir": d}


def run(bed, domain: str, **kw) -> dict:
    kw.setdefault("resolvers", (bed["resolver"],))
    options = MailDnsOptions(domains=(domain,), opendkim_keytable=kw.pop("keytable", None), **kw)
    [check] = MailDnsCheck.instances(options, Env(Config("<test>")))
    return {r.check.split(":", 2)[2]: r for r in check.run(Env(Config("<test>")))}


# --- MX ---------------------------------------------------------------------------------

def test_mx_whose_hosts_resolve_is_ok(bed):
    r = run(bed, "good.test")["mx"]
    assert r.status is Status.OK and r.check == "maildns:good.test:mx"
    assert "192.0.2.10" in r.details


def test_mx_host_without_address_is_critical(bed):
    r = run(bed, "mxnoaddr.bad.test")["mx"]
    assert r.status is Status.CRIT and "ghost.bad.test" in r.summary
    assert "ghost.bad.test. A" in r.remedy


def test_domain_without_mx_is_critical_with_the_record_to_publish(bed):
    r = run(bed, "void.bad.test")["mx"]
    assert r.status is Status.CRIT and "no MX" in r.summary
    assert "void.bad.test. MX 10 mail.void.bad.test." in r.remedy
    assert run(bed, "nx.bad.test")["mx"].summary == "nx.bad.test does not exist in DNS"


def test_details_say_the_resolver_is_the_appliances_own_bind(bed):
    mx = run(bed, "good.test")["mx"]
    assert f"resolver {bed['resolver']} is this appliance's own BIND, serving good.test" \
        in mx.details
    assert mx.depends_on == ("service:named*", "dns:good.test"), "inhibited while named fails"


def test_the_local_bind_not_serving_the_domain_is_not_called_its_own(bed):
    # named answers REFUSED (no AA) for a zone it does not have: it is not that domain's server
    res = run(bed, "elsewhere.example", query_timeout=1.0, timeout=5.0)
    assert all("own BIND" not in r.details for r in res.values())
    assert all(r.depends_on == () for r in res.values())


@pytest.mark.parametrize("keep_aa", [False, True])
def test_a_loopback_forwarder_that_is_not_bind_is_not_called_its_own(bed, keep_aa):
    """A resolver on loopback that forwards (as unbound or systemd-resolved would): its
    process is not named, and its answers carry no AA bit (or, passed through, they do:
    the process alone then tells it is not BIND)."""
    import socket
    import threading

    import dns.flags
    import dns.message
    import dns.query

    host, port = bed["resolver"].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def forward():
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            reply = dns.query.udp(dns.message.from_wire(data), host, port=int(port), timeout=2)
            if not keep_aa:
                reply.flags &= ~dns.flags.AA
            sock.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        res = run(bed, "good.test", resolvers=(f"127.0.0.1:{sock.getsockname()[1]}",))
    finally:
        stop.set()
        thread.join(5)
        sock.close()
    assert res["mx"].status is Status.OK, "the forwarder answers"
    assert all("own BIND" not in r.details for r in res.values())
    assert all(r.depends_on == () for r in res.values())


# --- SPF --------------------------------------------------------------------------------

def test_good_spf_is_ok_and_counts_its_lookups(bed):
    r = run(bed, "good.test")["spf"]
    assert r.status is Status.OK, r.details
    assert "-all" in r.summary
    assert r.metrics[0].name == "spf_lookups" and r.metrics[0].value == 2  # mx, include


@pytest.mark.parametrize(("domain", "status", "words"), [
    ("lookups.bad.test", Status.CRIT, "11 DNS lookups"),
    ("void.bad.test", Status.CRIT, "3 void lookups"),
    ("loop.bad.test", Status.CRIT, "loop"),
    ("two.bad.test", Status.CRIT, "2 SPF records"),
    ("plusall.bad.test", Status.CRIT, "+all"),
    ("qall.bad.test", Status.WARN, "?all"),
    ("syntax.bad.test", Status.CRIT, "invalid"),
    ("nospf.bad.test", Status.CRIT, "no SPF record"),
])
def test_broken_spf_is_flagged_with_a_remedy(bed, domain, status, words):
    r = run(bed, domain)["spf"]
    assert r.status is status, (r.summary, r.details)
    assert words in r.summary
    assert r.remedy


def test_the_spf_remedy_of_a_domain_without_mx_has_no_mx_term(bed):
    r = run(bed, "nomx.bad.test")["spf"]
    assert r.status is Status.CRIT and "no SPF record" in r.summary
    assert " mx" not in r.remedy.replace("has no MX", "")
    assert 'nomx.bad.test. TXT "v=spf1 ip4:<address this appliance sends from> -all"' \
        in r.remedy and "set sending_ips" in r.remedy
    r = run(bed, "nomx.bad.test", sending_ips=("192.0.2.5", "2001:db8::5"))["spf"]
    assert r.remedy == 'publish nomx.bad.test. TXT "v=spf1 ip4:192.0.2.5 ip6:2001:db8::5 -all"'


def test_the_spf_remedy_keeps_the_mx_and_the_includes_found(bed):
    r = run(bed, "twoinc.bad.test", sending_ips=("203.0.113.9",))["spf"]
    assert r.status is Status.CRIT and "2 SPF records" in r.summary
    assert r.remedy == ('merge them into one and delete the others: twoinc.bad.test. TXT '
                        '"v=spf1 mx ip4:203.0.113.9 include:_spf.good.test -all"')
    assert run(bed, "nospf.bad.test")["spf"].remedy == \
        'publish nospf.bad.test. TXT "v=spf1 mx -all"'


def test_sending_ips_are_evaluated_against_spf(bed):
    res = run(bed, "good.test", sending_ips=("192.0.2.10", "198.51.100.7", "203.0.113.5"))
    assert res["spf:192.0.2.10"].status is Status.OK       # through mx
    assert res["spf:198.51.100.7"].status is Status.OK     # through include
    bad = res["spf:203.0.113.5"]
    assert bad.status is Status.CRIT and "fail" in bad.summary
    assert "ip4:203.0.113.5" in bad.remedy


def test_sending_ip_only_neutral_under_question_all_is_a_warning(bed):
    r = run(bed, "qall.bad.test", sending_ips=("192.0.2.99",))["spf:192.0.2.99"]
    assert r.status is Status.WARN and "neutral" in r.summary


def test_sending_ip_under_a_looping_spf_is_a_permerror(bed):
    r = run(bed, "loop.bad.test", sending_ips=("192.0.2.99",))["spf:192.0.2.99"]
    assert r.status is Status.CRIT and "permerror" in r.summary


# --- DMARC ------------------------------------------------------------------------------

def test_enforced_dmarc_with_authorized_external_reports_is_ok(bed):
    r = run(bed, "good.test")["dmarc"]
    assert r.status is Status.OK, r.details
    assert r.summary == "DMARC p=reject"


@pytest.mark.parametrize(("domain", "status", "words", "remedy"), [
    ("badtags.bad.test", Status.CRIT, "p=maybe", "v=DMARC1; p=quarantine"),
    ("none.bad.test", Status.WARN, "unenforced", "p=quarantine"),
    ("unauth.bad.test", Status.CRIT, "reports.test has not authorized",
     'unauth.bad.test._report._dmarc.reports.test. TXT "v=DMARC1"'),
    ("two.bad.test", Status.CRIT, "2 DMARC records", "keep one"),
    ("nospf.bad.test", Status.CRIT, "no DMARC record", "_dmarc.nospf.bad.test. TXT"),
])
def test_broken_dmarc_is_flagged_with_a_remedy(bed, domain, status, words, remedy):
    r = run(bed, domain)["dmarc"]
    assert r.status is status, (r.summary, r.details)
    assert words in r.summary
    assert remedy in r.remedy


def test_a_dmarc_record_with_several_errors_reports_each(bed):
    r = run(bed, "badtags.bad.test")["dmarc"]
    assert r.status is Status.CRIT
    assert r.summary == ("DMARC record has 3 errors: p=maybe is not none, quarantine or "
                         "reject; pct=150 is not a whole number from 0 to 100; adkim=x is not "
                         "r (relaxed) or s (strict)")
    assert "error: pct=150 is not a whole number from 0 to 100" in r.details.splitlines()


# --- DKIM -------------------------------------------------------------------------------

def test_dkim_key_matching_the_local_2048_bit_key_is_ok(bed):
    keys = {"s2048._domainkey.good.test": str(bed["keys"]["k2048"])}
    r = run(bed, "good.test", dkim_selectors=("s2048",), dkim_keys=keys)["dkim:s2048"]
    assert r.status is Status.OK, r.details
    assert "2048 bits" in r.summary and "matches the private key" in r.details


def test_ed25519_keys_are_matched_like_rsa_ones(bed):
    keys = {"ed._domainkey.good.test": str(bed["keys"]["ed"]),
            "edwrong._domainkey.good.test": str(bed["keys"]["ed"])}
    r = run(bed, "good.test", dkim_selectors=("ed", "edwrong"), dkim_keys=keys)
    assert r["dkim:ed"].status is Status.OK, r["dkim:ed"].details
    assert "matches the Ed25519 private key" in r["dkim:ed"].details
    bad = r["dkim:edwrong"]
    assert bad.status is Status.CRIT and "does not match the Ed25519 private key" in bad.summary
    assert "k=ed25519; p=" in bad.remedy and bed["keys"]["ed"].name not in bad.remedy


@pytest.mark.parametrize(("selector", "key", "status", "words"), [
    ("s1024", "k1024", Status.WARN, "1024-bit RSA key is weak"),
    ("s512", "k512", Status.CRIT, "512-bit"),
    ("mismatch", "k2048", Status.CRIT, "does not match"),
    ("revoked", None, Status.CRIT, "revoked"),
    ("garbage", None, Status.CRIT, "not base64"),
    ("absent", None, Status.CRIT, "no DKIM key published"),
])
def test_broken_dkim_is_flagged_with_a_remedy(bed, selector, key, status, words):
    keys = {f"{selector}._domainkey.good.test": str(bed["keys"][key])} if key else {}
    r = run(bed, "good.test", dkim_selectors={"good.test": (selector,)}, dkim_keys=keys)
    r = r[f"dkim:{selector}"]
    assert r.status is status, (r.summary, r.details)
    assert words in r.summary
    assert r.remedy


def test_mismatched_key_remedy_is_the_record_of_the_local_key(bed):
    keys = {"mismatch._domainkey.good.test": str(bed["keys"]["k2048"])}
    r = run(bed, "good.test", dkim_selectors=("mismatch",), dkim_keys=keys)["dkim:mismatch"]
    der = subprocess.run(["openssl", "pkey", "-in", str(bed["keys"]["k2048"]), "-pubout",
                          "-outform", "DER"], check=True, capture_output=True, timeout=30).stdout
    pub = base64.b64encode(der).decode()
    assert f'mismatch._domainkey.good.test. TXT "v=DKIM1; k=rsa; p={pub}"' in r.remedy


def test_selectors_and_keys_come_from_the_opendkim_keytable(bed, tmp_path):
    table = tmp_path / "KeyTable"
    table.write_text("# OpenDKIM\n"
                     f"s2048._domainkey.good.test good.test:s2048:{bed['keys']['k2048']}\n"
                     f"x._domainkey.other.test other.test:x:{bed['keys']['k1024']}\n")
    res = run(bed, "good.test", keytable=str(table))
    assert res["dkim:s2048"].status is Status.OK
    assert "matches the private key" in res["dkim:s2048"].details
    assert "dkim:x" not in res


def test_unreadable_keytable_is_unknown_but_configured_selectors_still_run(bed, tmp_path):
    res = run(bed, "good.test", keytable=str(tmp_path / "missing"), dkim_selectors=("s2048",))
    assert res["dkim"].status is Status.UNKNOWN and "KeyTable" in res["dkim"].summary
    assert res["dkim:s2048"].status is Status.OK


def test_no_known_selector_is_a_warning(bed):
    r = run(bed, "good.test")["dkim"]
    assert r.status is Status.WARN and "dkim_selectors" in r.remedy


# --- PTR and DNSBL ----------------------------------------------------------------------

def test_ptr_with_forward_confirmation_is_ok_and_without_is_critical(bed):
    res = run(bed, "good.test", sending_ips=("192.0.2.10", "192.0.2.11", "192.0.2.12"))
    assert res["ptr:192.0.2.10"].status is Status.OK
    nofwd = res["ptr:192.0.2.11"]
    assert nofwd.status is Status.CRIT and "does not resolve back" in nofwd.summary
    assert "nofwd.good.test. A 192.0.2.11" in nofwd.remedy
    none = res["ptr:192.0.2.12"]
    assert none.status is Status.CRIT and "no PTR" in none.summary
    assert "set its PTR" in none.remedy


def test_listed_sending_ip_is_critical_with_the_reason(bed):
    res = run(bed, "good.test", sending_ips=("192.0.2.10", "192.0.2.12"), dnsbl=("bl.test",))
    assert res["dnsbl:192.0.2.10"].status is Status.OK
    listed = res["dnsbl:192.0.2.12"]
    assert listed.status is Status.CRIT and "bl.test" in listed.summary
    assert "spam seen" in listed.details and "delisting" in listed.remedy


# --- the check as a whole ---------------------------------------------------------------

def test_no_domains_means_no_instances():
    assert list(MailDnsCheck.instances(MailDnsOptions(), Env(Config("<test>")))) == []


def test_one_instance_per_domain():
    options = MailDnsOptions(domains=("a.test", "b.test"))
    ids = [c.id for c in MailDnsCheck.instances(options, Env(Config("<test>")))]
    assert ids == ["maildns:a.test", "maildns:b.test"]


def test_dead_resolver_gives_unknown_results_within_the_timeout(bed):
    from tests.mailserver import free_port

    t0 = time.monotonic()
    res = run(bed, "good.test", resolvers=(f"127.0.0.1:{free_port()}",), query_timeout=0.5,
              timeout=5.0, sending_ips=("192.0.2.10",))
    assert time.monotonic() - t0 < 5
    assert {r.status for k, r in res.items() if k != "dkim"} == {Status.UNKNOWN}


def test_silent_resolver_makes_unfinished_rules_unknown_by_name(bed):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # reads, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        res = run(bed, "good.test", resolvers=(f"127.0.0.1:{port}",), query_timeout=2.0,
                  timeout=1.0)
        took = time.monotonic() - t0
    assert took < 1.5
    assert res["spf"].status is Status.UNKNOWN and "timeout" in res["spf"].summary
    assert res["mx"].status is Status.UNKNOWN


def test_only_and_skip_take_a_result_id_on_the_command_line(bed, tmp_path):
    import json

    from tests.conftest import run_steward

    conf = tmp_path / "steward.toml"
    conf.write_text(f'[checks.maildns]\ndomains = ["good.test", "bad.test"]\n'
                    f'resolvers = ["{bed["resolver"]}"]\n')
    conf.chmod(0o600)

    def ids(*args):
        proc = run_steward("check", "--config", str(conf), "--state-dir", str(tmp_path / "s"),
                           "--format", "json", *args)
        # 3 (UNKNOWN): the resolver is a named on loopback serving the zones, so its signing
        # state is read with rndc (bind-dnssec), whose default control channel is not there
        assert proc.returncode in (0, 1, 2, 3) and proc.stdout, proc.stderr
        return sorted(r["check"] for r in json.loads(proc.stdout)["results"])

    assert ids("--only", "maildns:good.test:spf") == ["maildns:good.test:spf"]
    assert ids("--only", "maildns:*:mx") == ["maildns:bad.test:mx", "maildns:good.test:mx"]
    kept = ids("--only", "maildns:good.test", "--skip", "maildns:good.test:spf")
    assert "maildns:good.test:mx" in kept and "maildns:good.test:dmarc" in kept
    assert "maildns:good.test:bind-dnssec" in kept
    assert "maildns:good.test:spf" not in kept
