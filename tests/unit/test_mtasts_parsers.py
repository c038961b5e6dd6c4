"""The MTA-STS and TLS-RPT parsers (RFC 8461, RFC 8460) on good and malformed input."""

from __future__ import annotations

from checks.maildns.lookup import Invalid
from checks.maildns.mtasts import mx_matches, parse_policy, parse_sts_txt, parse_tlsrpt


def test_sts_txt():
    assert parse_sts_txt("v=STSv1; id=20261207") == {"v": "STSv1", "id": "20261207"}
    assert parse_sts_txt("v=STSv1;id=a1;ext=x;") == {"v": "STSv1", "id": "a1", "ext": "x"}
    for text, why in (("id=1; v=STSv1", "not the first"), ("v=STSv1", "no id"),
                      ("v=STSv2; id=1", "accepted: STSv1"), ("v=STSv1; id=" + "1" * 33, "1 to 32"),
                      ("v=STSv1; id=1; id=2", "twice"), ("v=STSv1; junk", "not name=value")):
        r = parse_sts_txt(text)
        assert isinstance(r, Invalid) and why in r.reason, (text, r)


def test_policy():
    p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: Mail.Example.com.\r\n"
                     "mx: *.example.net\r\nmax_age: 604800\r\nfoo: bar\r\n")
    assert not isinstance(p, Invalid)
    assert (p.mode, p.max_age, p.mx, p.unknown) == (
        "enforce", 604800, ("mail.example.com", "*.example.net"), ("foo",))
    none = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n")
    assert not isinstance(none, Invalid) and none.mx == ()
    for text, why in (("", "empty"), ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
                      ("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n", "max_age"),
                      ("mode: enforce\nversion: STSv1\nmx: a.b\nmax_age: 1\n", "first line"),
                      ("version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n", "host name"),
                      ("version: STSv1\nmode: x\nmode: y\nmx: a.b\nmax_age: 1\n", "twice"),
                      ("version: STSv1\nbroken line\n", "not key: value")):
        r = parse_policy(text)
        assert isinstance(r, Invalid) and why in r.reason, (text, r)


def test_mx_patterns():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.com", "mx1.example.com")
    assert not mx_matches("*.example.com", "a.mx1.example.com")
    assert not mx_matches("*.example.com", "example.com")
    assert not mx_matches("mail.example.com", "mail2.example.com")


def test_tlsrpt():
    assert parse_tlsrpt("v=TLSRPTv1; rua=mailto:a@b.example, https://r.example/x?a=1") == [
        "mailto:a@b.example", "https://r.example/x?a=1"]
    for text, why in (("v=TLSRPTv1", "no rua"), ("rua=mailto:a@b.c; v=TLSRPTv1", "first"),
                      ("v=TLSRPTv1; rua=http://r.example/", "not a mailto: or https:"),
                      ("v=TLSRPTv1; rua=mailto:nobody", "not a mailto:"),
                      ("v=TLSRPTv1; rua=mailto:a@b.c; rua=mailto:d@e.f", "twice")):
        r = parse_tlsrpt(text)
        assert isinstance(r, Invalid) and why in r.reason, (text, r)
