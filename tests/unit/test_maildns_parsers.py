"""The SPF, DMARC and DKIM record parsers (including hostile input), the DER key reader, the
KeyTable reader and the maildns options."""

from __future__ import annotations

import base64
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.schema import ConfigError, build
from checks.maildns import MailDnsOptions
from checks.maildns.dkim import (
    DkimRecord,
    parse_dkim,
    private_key_numbers,
    publishable,
    read_keytable,
    rsa_public_numbers,
)
from checks.maildns.dmarc import DmarcRecord, external, is_dmarc, parse_dmarc
from checks.maildns.lookup import Invalid, reverse_labels, split_resolver
from checks.maildns.spf import SpfRecord, parse_spf

# Text that looks like records: their own vocabulary mixed with anything, quotes and all.
PIECES = st.sampled_from(["v=spf1", "v=DMARC1", "v=DKIM1", "p=", "k=rsa", "include:", "a",
                          "mx", "ip4:", "ip6:", "/", "//", "%{", "}", "=", ";", ":", '"', "'",
                          "\\", " ", "-all", "+all", "redirect=", "rua=mailto:", "@", ",",
                          "MIIB", "=="])
HOSTILE = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),
    st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=60).map("".join),
    st.builds(lambda p, s: p + s, st.sampled_from(["v=spf1 ", "v=DMARC1; ", "v=DKIM1; p="]),
              st.text(max_size=300)),
)


@settings(max_examples=400, deadline=None)
@given(HOSTILE)
def test_hostile_text_never_crashes_the_spf_parser(text):
    assert isinstance(parse_spf(text), (SpfRecord, Invalid))


@settings(max_examples=400, deadline=None)
@given(HOSTILE)
def test_hostile_text_never_crashes_the_dmarc_parser(text):
    assert isinstance(parse_dmarc(text), (DmarcRecord, Invalid))


@settings(max_examples=400, deadline=None)
@given(HOSTILE)
def test_hostile_text_never_crashes_the_dkim_parser(text):
    assert isinstance(parse_dkim(text), (DkimRecord, Invalid))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_hostile_der_never_crashes_the_key_reader(der):
    rsa_public_numbers(der)
    p = base64.b64encode(der).decode()
    assert isinstance(parse_dkim(f"v=DKIM1; p={p}"), (DkimRecord, Invalid))


def test_huge_records_are_handled():
    big = "v=spf1 " + "ip4:192.0.2.1 " * 20000 + "-all"
    assert isinstance(parse_spf(big), SpfRecord)
    assert isinstance(parse_dmarc("v=DMARC1; p=none; x=" + "y" * 10**6), DmarcRecord)
    assert isinstance(parse_dkim("v=DKIM1; p=" + "A" * 10**6 + "!"), Invalid)


# --- SPF ---------------------------------------------------------------------------------

def test_spf_mechanisms_qualifiers_and_cidr_are_parsed():
    r = parse_spf("v=spf1 a/24 mx:mail.example.com//64 ~ip4:192.0.2.0/24 ip6:2001:db8::/32 "
                  "include:_spf.example.net exists:%{i}._spf.%{d} redirect=_spf.example.com")
    assert isinstance(r, SpfRecord)
    names = [(t.qualifier, t.name, t.domain) for t in r.terms]
    assert names[0] == ("+", "a", "") and r.terms[0].cidr4 == 24
    assert names[1] == ("+", "mx", "mail.example.com") and r.terms[1].cidr6 == 64
    assert names[2][:2] == ("~", "ip4")
    assert r.modifier("redirect") == "_spf.example.com"
    assert r.all_qualifier is None


@pytest.mark.parametrize(("text", "reason"), [
    ("v=spf2 -all", "v=spf1"),
    ("v=spf1 ip4:999.0.0.1 -all", "not an IP4"),
    ("v=spf1 ip4:2001:db8::1", "not an IP4"),
    ("v=spf1 include -all", "needs a domain"),
    ("v=spf1 foo:bar", "unknown mechanism"),
    ("v=spf1 a/33", "bad CIDR"),
    ("v=spf1 exists:%{x}.example.com", "bad macro"),
    ("v=spf1 redirect=a.example redirect=b.example", "twice"),
    ("v=spf1 all:example.com", "all takes nothing"),
])
def test_invalid_spf_says_why(text, reason):
    r = parse_spf(text)
    assert isinstance(r, Invalid) and reason in r.reason


# --- DMARC -------------------------------------------------------------------------------

def test_dmarc_tags_and_destinations_are_parsed():
    r = parse_dmarc("v=DMARC1; p=Reject; sp=quarantine; pct=50; adkim=s; aspf=r; "
                    "rua=mailto:a@example.com,mailto:b@reports.example.net!10m; "
                    "ruf=mailto:f@example.com; fo=0:d; ri=3600")
    assert isinstance(r, DmarcRecord)
    assert r.policy == "reject"
    assert r.destinations() == [("rua", "example.com"), ("rua", "reports.example.net"),
                                ("ruf", "example.com")]


@pytest.mark.parametrize(("text", "reason"), [
    ("p=reject; v=DMARC1", "v=DMARC1"),
    ("v=DMARC1", "p= (the policy) is missing"),
    ("v=DMARC1; p=block", "p=block"),
    ("v=DMARC1; p=none; sp=maybe", "sp=maybe"),
    ("v=DMARC1; p=none; pct=101", "pct=101"),
    ("v=DMARC1; p=none; adkim=x", "adkim=x"),
    ("v=DMARC1; p=none; rua=https://example.com/r", "not a mailto"),
    ("v=DMARC1; p=none; rua=mailto:nobody", "not a mailto"),
    ("v=DMARC1; p=none; fo=2", "fo=2"),
    ("v=DMARC1; p=none; ri=soon", "ri=soon"),
    ("v=DMARC1; p=none; p=reject", "twice"),
])
def test_invalid_dmarc_says_why(text, reason):
    r = parse_dmarc(text)
    assert isinstance(r, Invalid) and reason in r.reason


def test_a_dmarc_record_with_several_errors_reports_every_one():
    r = parse_dmarc("v=DMARC1; p=maybe; pct=150; adkim=x; rua=mailto:nobody; junk; "
                    "fo=1; fo=0")
    assert isinstance(r, Invalid)
    assert r.reason.split("; ") == [
        "'junk' is not tag=value", "tag fo appears twice",
        "p=maybe is not none, quarantine or reject", "pct=150 is not a whole number from 0 "
        "to 100", "adkim=x is not r (relaxed) or s (strict)",
        "rua: 'mailto:nobody' is not a mailto:address[!size] URI"]


def test_dmarc_record_recognition_and_external_destinations():
    assert is_dmarc("v=DMARC1; p=none") and is_dmarc("v = DMARC1") and not is_dmarc("v=DMARC10")
    assert not external("example.com", "example.com")
    assert not external("mail.example.com", "example.com")
    assert external("example.com", "reports.example.net")


# --- DKIM --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("dkim") / "k.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True,
                   capture_output=True, timeout=60)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=30).stdout
    # genrsa writes PKCS#8 with OpenSSL 3 (EL9) but PKCS#1 with 1.1.1 (the 3.9 root), and
    # only 3 has "rsa -traditional": ask pkcs8/pkey, the same in both, for each form.
    pkcs8 = subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(path)],
                           check=True, capture_output=True, timeout=30).stdout.decode()
    pkcs1 = subprocess.run(["openssl", "pkey", "-in", str(path), "-traditional"], check=True,
                           capture_output=True, timeout=30).stdout.decode()
    assert pkcs8.startswith("-----BEGIN PRIVATE KEY-----")
    assert pkcs1.startswith("-----BEGIN RSA PRIVATE KEY-----")
    return pkcs8, pkcs1, der


def test_published_and_private_rsa_numbers_agree(rsa_key):
    pkcs8, pkcs1, der = rsa_key
    r = parse_dkim("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
    assert isinstance(r, DkimRecord) and r.bits == 1024
    assert r.rsa == private_key_numbers(pkcs8) == private_key_numbers(pkcs1)


def test_publishable_record_carries_the_same_key_openssl_derives(rsa_key):
    pkcs8, _, der = rsa_key
    record = publishable("sel", "example.com", private_key_numbers(pkcs8))
    assert record == f'sel._domainkey.example.com. TXT "v=DKIM1; k=rsa; ' \
                     f'p={base64.b64encode(der).decode()}"'


def test_revoked_and_invalid_dkim_records():
    assert parse_dkim("v=DKIM1; k=rsa; p=").revoked
    assert "p= (the public key) is missing" in parse_dkim("v=DKIM1; k=rsa").reason
    assert "must come first" in parse_dkim("k=rsa; v=DKIM1; p=").reason
    assert "k=dsa" in parse_dkim("v=DKIM1; k=dsa; p=AAAA").reason
    assert "not a DER RSA" in parse_dkim("v=DKIM1; p=AAAA").reason
    assert parse_dkim("v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(32)).decode()).key


def test_encrypted_or_foreign_private_keys_are_refused():
    with pytest.raises(ValueError, match="encrypted"):
        private_key_numbers("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                            "-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="no PEM"):
        private_key_numbers("hello")


def test_keytable_lines_give_domain_selector_and_key(tmp_path):
    table = tmp_path / "KeyTable"
    table.write_text("# comment\n\nsel._domainkey.Example.com example.com:sel:/etc/k.private\n"
                     "broken line\n")
    assert read_keytable(table) == {
        "sel._domainkey.Example.com": ("example.com", "sel", "/etc/k.private")}


# --- helpers and options ------------------------------------------------------------------

def test_resolver_addresses_with_and_without_ports():
    assert split_resolver("192.0.2.1") == ("192.0.2.1", 53)
    assert split_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_resolver("[::1]:5353") == ("::1", 5353)
    assert split_resolver("2001:db8::1") == ("2001:db8::1", 53)
    with pytest.raises(ValueError):
        split_resolver("ns.example.com")


def test_dnsbl_names_reverse_the_address():
    assert reverse_labels("192.0.2.1") == "1.2.0.192"
    assert reverse_labels("2001:db8::1").startswith("1.0.0.0.") and \
        reverse_labels("2001:db8::1").endswith(".8.b.d.0.1.0.0.2")


def test_options_accept_selector_lists_or_tables_and_reject_bad_values():
    o = build(MailDnsOptions, {"domains": ["Example.com."], "dkim_selectors": ["a", "b"],
                               "resolvers": ["127.0.0.1:5353"], "sending_ips": ["192.0.2.1"]},
              "<test>", "checks.maildns")
    assert o.domains == ("example.com",) and o.dkim_selectors == ("a", "b")
    o = build(MailDnsOptions, {"dkim_selectors": {"example.com": ["a"]}}, "<test>", "x")
    assert o.dkim_selectors["example.com"] == ("a",)
    for bad in ({"sending_ips": ["mail.example.com"]}, {"resolvers": ["ns1"]},
                {"domains": ["two words"]}, {"dkim_selectors": 3},
                {"dkim_selectors": ["bad selector"]}, {"dkim_keys": {"sel.example.com": "/k"}}):
        with pytest.raises(ConfigError):
            build(MailDnsOptions, bad, "<test>", "checks.maildns")
