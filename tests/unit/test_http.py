"""HTTP probes against real HTTP and HTTPS servers on loopback, with certificates of chosen
lifetimes from a throwaway CA."""

from __future__ import annotations

import socket

import pytest

from agent.config import Config
from agent.config.schema import ConfigError, build
from agent.env import Env
from agent.model import Status
from agent.ranges import Range
from checks.http import HttpCheck, HttpOptions
from checks.probe import is_local
from tests.mailserver import free_port, make_ca
from tests.tlsservers import Page, WebServer, issue_cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, _, _ = make_ca(d / "ca")
    other_ca, _, _ = make_ca(d / "other")
    certs = {days: issue_cert(ca, days) for days in (5, 15, 200)}
    return {"ca": str(ca), "ca_pem": ca, "other_ca": str(other_ca), "certs": certs}


@pytest.fixture(scope="module")
def site(pki):
    """An HTTPS server with a 200-day certificate."""
    cert, key = pki["certs"][200]
    pages = {"/": Page(200, "<h1>Welcome to the appliance</h1>"),
             "/missing": Page(404, "no such page"),
             "/moved": Page(302, "", {"Location": "/"})}
    with WebServer(pages, cert=cert, key=key) as srv:
        yield srv


def run(url, **kw):
    [r] = HttpCheck(HttpOptions(**kw), url).run(Env(Config("<test>")))
    return r


def test_https_site_with_a_long_lived_certificate_is_ok(site, pki):
    r = run(site.url(), ca_file=pki["ca"])
    assert r.status is Status.OK, r
    assert "200 in" in r.summary and "certificate expires in 200 days" in r.summary
    names = {m.name: m for m in r.metrics}
    assert names["response_time"].uom == "s" and names["cert_days_left"].value > 199
    assert r.unit == "httpd" and r.depends_on == ("service:httpd",)


@pytest.mark.parametrize("days, status", [(5, Status.CRIT), (15, Status.WARN)])
def test_certificate_close_to_expiry_alerts(pki, days, status):
    cert, key = pki["certs"][days]
    with WebServer({"/": Page()}, cert=cert, key=key) as srv:
        r = run(srv.url(), ca_file=pki["ca"])
    assert r.status is status, r
    assert f"expires in {days} days" in r.summary
    assert "renew the certificate" in r.remedy


def test_expiry_thresholds_are_configurable(site, pki):
    r = run(site.url(), ca_file=pki["ca"], expiry_warn=Range.parse("365:"))
    assert r.status is Status.WARN


def test_certificate_from_an_unknown_ca_is_critical_never_ignored(site, pki):
    r = run(site.url(), ca_file=pki["other_ca"])
    assert r.status is Status.CRIT
    assert "certificate verify failed" in r.summary


def test_certificate_for_another_name_is_critical(pki):
    cert, key = issue_cert(pki["ca_pem"], 200, name="www", sans="DNS:www.example.com")
    with WebServer({"/": Page()}, cert=cert, key=key) as srv:
        r = run(srv.url(), ca_file=pki["ca"])
    assert r.status is Status.CRIT
    assert "does not name localhost (it names DNS:www.example.com)" in r.summary


def test_unexpected_status_is_critical(site, pki):
    r = run(site.url("/missing"), ca_file=pki["ca"])
    assert r.status is Status.CRIT and "status 404, expected 200" in r.summary
    assert run(site.url("/missing"), ca_file=pki["ca"], expect=(200, 404)).status is Status.OK


def test_redirects_are_followed_unless_told_not_to(site, pki):
    assert run(site.url("/moved"), ca_file=pki["ca"]).status is Status.OK
    r = run(site.url("/moved"), ca_file=pki["ca"], follow_redirects=False)
    assert r.status is Status.CRIT and "status 302" in r.summary


def test_body_must_match_the_regex(site, pki):
    assert run(site.url(), ca_file=pki["ca"], match=r"Welcome to the").status is Status.OK
    r = run(site.url(), ca_file=pki["ca"], match=r"Roundcube")
    assert r.status is Status.CRIT and "body does not match /Roundcube/" in r.summary


def test_slow_response_is_judged_against_the_latency_range(site, pki):
    r = run(site.url(), ca_file=pki["ca"], warn=Range.parse("@0:60"))
    assert r.status is Status.WARN and "response took" in r.summary


def test_plain_http_must_redirect_to_https_when_required(site, pki):
    redirecting = WebServer({"/": Page(301, "", {"Location": site.url()})})
    not_redirecting = WebServer({"/": Page(200, "plain site")})
    with redirecting, not_redirecting:
        ok = run(site.url(), ca_file=pki["ca"], require_https_redirect=True,
                 http_port=redirecting.port)
        bad = run(site.url(), ca_file=pki["ca"], require_https_redirect=True,
                  http_port=not_redirecting.port)
    assert ok.status is Status.OK, ok
    assert "redirects to https" in ok.summary
    assert bad.status is Status.CRIT
    assert "does not redirect to https (200)" in bad.summary and "Redirect" in bad.remedy


def test_plain_http_site_is_probed_without_certificate_checks():
    with WebServer({"/": Page()}) as srv:
        r = run(srv.url())
    assert r.status is Status.OK, r
    assert "cert_days_left" not in {m.name for m in r.metrics}


def test_refused_connection_is_critical():
    r = run(f"http://127.0.0.1:{free_port()}/")
    assert r.status is Status.CRIT and "Connection refused" in r.summary


def test_hung_server_times_out_as_critical():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        r = run(f"http://127.0.0.1:{srv.getsockname()[1]}/", request_timeout=0.3)
    assert r.status is Status.CRIT and "no answer within 0.3 s" in r.summary


def test_only_local_urls_are_linked_to_httpd_unless_configured():
    refused = f"http://127.0.0.1:{free_port()}/"
    [r] = HttpCheck(HttpOptions(), refused).run(Env(Config("<test>")))
    assert r.unit == "httpd" and r.status is Status.CRIT
    [r] = HttpCheck(HttpOptions(units={refused: "nginx"}), refused).run(Env(Config("<test>")))
    assert r.unit == "nginx" and r.depends_on == ("service:nginx",)
    [r] = HttpCheck(HttpOptions(units={refused: ""}), refused).run(Env(Config("<test>")))
    assert r.unit == "" and r.depends_on == ()
    assert is_local("localhost") and is_local("::1") and not is_local("www.example.com")


@pytest.mark.parametrize("table, problem", [
    ({"urls": ["ftp://x/"]}, "not an http"),
    ({"expect": [200, 999]}, "HTTP status"),
    ({"match": "("}, "regular expression"),
])
def test_bad_options_are_refused_at_load(table, problem):
    with pytest.raises(ConfigError, match=problem):
        build(HttpOptions, table, "steward.toml", "checks.http")


def test_expect_accepts_one_status_or_a_list():
    assert build(HttpOptions, {"expect": 204}, "f", "p").expect == (204,)
    assert build(HttpOptions, {"expect": [200, 301]}, "f", "p").expect == (200, 301)
