"""The certrenew check on a certbot tree of real certificates from a test CA, with HTTPS servers
on loopback serving the renewed certificate or the one from before the renewal."""

from __future__ import annotations

import shutil
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.certrenew import CertRenewCheck, CertRenewOptions
from tests.mailserver import make_ca
from tests.tlsservers import WebServer, issue_cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca, _, _ = make_ca(d / "ca")
    old = issue_cert(ca, 60, "old")
    time.sleep(1.1)  # notBefore has a resolution of a second
    new = issue_cert(ca, 90, "new")
    return {"ca": ca, "old": old, "new": new, "soon": issue_cert(ca, 10, "soon"),
            "verysoon": issue_cert(ca, 3, "verysoon")}


def tree(tmp_path, lineages: dict, cron: bool = True):
    root = tmp_path / "root"
    le = root / "etc/letsencrypt"
    for name, cert in lineages.items():
        (le / "renewal").mkdir(parents=True, exist_ok=True)
        (le / "renewal" / f"{name}.conf").write_text(f"cert = /etc/letsencrypt/live/{name}/"
                                                     "cert.pem\n[renewalparams]\n")
        (le / "live" / name).mkdir(parents=True)
        shutil.copy(cert, le / "live" / name / "cert.pem")
    if cron:
        (root / "etc/cron.d").mkdir(parents=True)
        (root / "etc/cron.d/certbot").write_text(
            "0 */12 * * * root test -x /usr/bin/certbot && certbot -q renew\n")
    return root


def run(root, **kw) -> dict:
    env = Env(Config("<test>"), sysroot=root)
    [check] = CertRenewCheck.instances(CertRenewOptions(**kw), env)
    return {r.check: r for r in check.run(env)}


def test_daemon_not_reloaded_after_renewal_is_critical(tmp_path, certs):
    root = tree(tmp_path, {"mail": certs["new"][0]})
    with WebServer({}, cert=certs["old"][0], key=certs["old"][1]) as stale, \
            WebServer({}, cert=certs["new"][0], key=certs["new"][1]) as fresh:
        r = run(root, served={"mail": [f"localhost:{stale.port}", f"localhost:{fresh.port}"]})
    assert r["certrenew:renewer"].status is Status.OK
    assert "/etc/cron.d/certbot" in r["certrenew:renewer"].summary
    assert r["certrenew:mail"].status is Status.OK and "valid 90 more days" in \
        r["certrenew:mail"].summary
    bad = r[f"certrenew:mail:localhost:{stale.port}"]
    assert bad.status is Status.CRIT and "the daemon was not reloaded" in bad.summary, bad
    assert "renew_hook" in bad.remedy
    good = r[f"certrenew:mail:localhost:{fresh.port}"]
    assert good.status is Status.OK and "serves the certificate on disk" in good.summary


def test_failing_renewal_and_nothing_renewing(tmp_path, certs):
    root = tree(tmp_path, {"a": certs["soon"][0], "b": certs["verysoon"][0]}, cron=False)
    r = run(root, served={"a": ["localhost:1"]})
    assert r["certrenew:renewer"].status is Status.CRIT
    assert r["certrenew:a"].status is Status.WARN and "renewal is failing" in \
        r["certrenew:a"].summary
    assert r["certrenew:b"].status is Status.CRIT
    assert r["certrenew:a:localhost:1"].status is Status.CRIT
    assert "no certificate served" in r["certrenew:a:localhost:1"].summary


def test_no_certbot_yields_nothing(tmp_path):
    assert run(tmp_path) == {}
