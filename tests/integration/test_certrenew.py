"""The certrenew check on a certbot tree of real certificates from a test CA, with HTTPS servers
on loopback serving the renewed certificate or the one from before the renewal; httpd's mod_md
from an httpd config tree and an md store in mod_md's own file formats (md.json, job.json)."""

from __future__ import annotations

import email.utils
import json
import shutil
import time

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.certrenew import CertRenewCheck, CertRenewOptions
from tests.clocks import FakeClock
from tests.mailserver import make_ca
from tests.tlsservers import WebServer, issue_cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca, _, _ = make_ca(d / "ca")
    old = issue_cert(ca, 60, "old")
    oldsoon = issue_cert(ca, 3, "oldsoon")
    time.sleep(1.1)  # notBefore has a resolution of a second
    new = issue_cert(ca, 90, "new")
    return {"ca": ca, "old": old, "oldsoon": oldsoon, "new": new,
            "soon": issue_cert(ca, 10, "soon"),
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


def run(root, clock=None, **kw) -> dict:
    env = Env(Config("<test>"), sysroot=root, **({"clock": clock} if clock else {}))
    [check] = CertRenewCheck.instances(CertRenewOptions(**kw), env)
    return {r.check: r for r in check.run(env)}


def test_daemon_not_reloaded_after_renewal(tmp_path, certs):
    root = tree(tmp_path, {"mail": certs["new"][0]})
    with WebServer({}, cert=certs["old"][0], key=certs["old"][1]) as stale, \
            WebServer({}, cert=certs["oldsoon"][0], key=certs["oldsoon"][1]) as expiring, \
            WebServer({}, cert=certs["new"][0], key=certs["new"][1]) as fresh:
        r = run(root, served={"mail": [f"localhost:{stale.port}", f"localhost:{fresh.port}",
                                       f"localhost:{expiring.port}"]})
    assert r["certrenew:renewer"].status is Status.OK
    assert "/etc/cron.d/certbot" in r["certrenew:renewer"].summary
    assert r["certrenew:mail"].status is Status.OK and "valid 90 more days" in \
        r["certrenew:mail"].summary
    bad = r[f"certrenew:mail:localhost:{stale.port}"]
    assert bad.status is Status.WARN and "reload the daemon" in bad.summary, bad
    assert "60 days left" in bad.summary and "renew_hook" in bad.remedy
    # the certificate it still serves is about to expire: CRIT
    worse = r[f"certrenew:mail:localhost:{expiring.port}"]
    assert worse.status is Status.CRIT and "3 days left" in worse.summary, worse
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


LIMITS = {"renew_warn_days": 5, "renew_crit_days": 1}


def test_days_left_on_disk_are_counted_from_the_clock(tmp_path, certs):
    """The same certificate, 10 days from expiry: OK with 5 days' warning; with the clock
    8 days on, WARN; 9.5 days on, CRIT."""
    root = tree(tmp_path, {"mail": certs["soon"][0]})
    clock = FakeClock(time.time())  # the certificate's dates are real ones
    today = run(root, clock, **LIMITS)["certrenew:mail"]
    assert today.status is Status.OK and today.summary == "lineage mail: valid 10 more days"
    later = run(root, clock.advance(days=8), **LIMITS)["certrenew:mail"]
    assert later.status is Status.WARN and "expires in 2 days" in later.summary, later
    assert run(root, clock.advance(days=1.5), **LIMITS)["certrenew:mail"].status is Status.CRIT


# --- httpd's mod_md ------------------------------------------------------------------------

def md_json(name: str, domains: list, state: int) -> str:
    """md.json as mod_md 2.4 writes it (md_to_json)."""
    return json.dumps({
        "name": name, "domains": domains, "contacts": ["mailto:admin@example.test"],
        "transitive": 1, "ca": {"proto": "ACME", "urls": [
            "https://acme-v02.api.letsencrypt.org/directory"], "agreement": "accepted"},
        "state": state, "renew-mode": 1, "renew-window": "33%", "warn-window": "10%",
        "must-staple": False, "stapling": False}, indent=2)


def job_json(name: str, *, finished: bool, errors: int = 0, status: int = 0,
             last_run: float | None = None, problem: str = "", detail: str = "") -> str:
    """staging/<name>/job.json as mod_md's job_to_json writes it (RFC 822 times)."""
    last_run = time.time() - 600 if last_run is None else last_run
    job = {"name": name, "finished": finished, "notified": False, "notified-renewed": False,
           "last-run": email.utils.formatdate(last_run, usegmt=True),
           "next-run": email.utils.formatdate(last_run + 3600, usegmt=True),
           "errors": errors, "last": {"status": status, "problem": problem,
                                      "detail": detail, "activity": "renewing"},
           "log": {"entries": []}}
    return json.dumps(job, indent=2)


def httpd_tree(tmp_path, certs, conf: str, store: dict):
    root = tmp_path / "root"
    (root / "etc/httpd/conf").mkdir(parents=True)
    (root / "etc/httpd/conf.d").mkdir()
    (root / "etc/httpd/conf/httpd.conf").write_text(
        'ServerRoot "/etc/httpd"\nListen 80\nIncludeOptional conf.d/*.conf\n')
    (root / "etc/httpd/conf.d/md.conf").write_text(conf)
    md = root / "var/lib/httpd/md"
    for name, (state, cert, job) in store.items():
        (md / "domains" / name).mkdir(parents=True)
        (md / "domains" / name / "md.json").write_text(md_json(name, [name], state))
        if cert:
            shutil.copy(certs[cert][0], md / "domains" / name / "pubcert.pem")
        if job:
            (md / "staging" / name).mkdir(parents=True)
            (md / "staging" / name / "job.json").write_text(job)
    return root


MD_CONF = """# mod_md
MDCertificateAgreement accepted
MDContactEmail admin@example.test
MDomain good.test www.good.test
<MDomain failing.test>
    MDRenewMode auto
</MDomain>
MDomain staged.test
MDomain soon.test
MDomain fresh.test
"""


def test_mod_md_domains_are_judged_from_config_and_store(tmp_path, certs):
    root = httpd_tree(tmp_path, certs, MD_CONF, {
        "good.test": (2, "new", None),
        "failing.test": (2, "soon", job_json(
            "failing.test", finished=False, errors=3, status=70008,
            problem="urn:ietf:params:acme:error:dns",
            detail="DNS problem: NXDOMAIN looking up A for failing.test")),
        "staged.test": (2, "new", job_json("staged.test", finished=True,
                                           last_run=time.time() - 30 * 3600)),
        "soon.test": (2, "verysoon", None),
    })
    with WebServer({}, cert=certs["old"][0], key=certs["old"][1]) as stale:
        r = run(root, served={"good.test": [f"localhost:{stale.port}"]})
    assert "certrenew:renewer" not in r  # no certbot here
    good = r["certrenew:md:good.test"]
    assert good.status is Status.OK and good.summary == ("mod_md domain good.test: complete, "
                                                         "valid 90 more days"), good
    assert "MDomain good.test www.good.test" in good.details
    assert "MDCertificateAgreement accepted" in good.details
    served = r[f"certrenew:md:good.test:localhost:{stale.port}"]
    assert served.status is Status.WARN and "reload the daemon" in served.summary
    assert "MDNotifyCmd" in served.remedy
    failing = r["certrenew:md:failing.test"]
    assert failing.status is Status.WARN and failing.summary == (
        "mod_md domain failing.test: the last renewal attempt failed (3 error run(s)): "
        "urn:ietf:params:acme:error:dns DNS problem: NXDOMAIN looking up A for failing.test")
    assert "staging/failing.test/job.json; it retries at" in failing.remedy
    staged = r["certrenew:md:staged.test"]
    assert staged.status is Status.WARN and "waited 30 h in staging: httpd was not " \
        "restarted" in staged.summary, staged
    assert r["certrenew:md:soon.test"].status is Status.CRIT
    assert "renewal is failing" in r["certrenew:md:soon.test"].summary
    fresh = r["certrenew:md:fresh.test"]
    assert fresh.status is Status.WARN and "configured but not in md's store" in fresh.summary


def test_mod_md_days_left_and_staging_wait_are_counted_from_the_clock(tmp_path, certs):
    clock = FakeClock(time.time())
    root = httpd_tree(tmp_path, certs, "MDCertificateAgreement accepted\nMDomain soon.test\n"
                      "MDomain staged.test\n", {
                          "soon.test": (2, "soon", None),
                          "staged.test": (2, "new", job_json("staged.test", finished=True,
                                                             last_run=clock.now() - 600))})
    today = run(root, clock, **LIMITS)
    assert today["certrenew:md:soon.test"].status is Status.OK
    assert today["certrenew:md:soon.test"].summary == \
        "mod_md domain soon.test: complete, valid 10 more days"
    assert today["certrenew:md:staged.test"].status is Status.OK  # waited 10 minutes
    later = run(root, clock.advance(days=8), **LIMITS)
    soon = later["certrenew:md:soon.test"]
    assert soon.status is Status.WARN and "expires in 2 days" in soon.summary, soon
    staged = later["certrenew:md:staged.test"]
    assert staged.status is Status.WARN and "waited 192 h in staging" in staged.summary, staged
    assert run(root, clock.advance(days=1.5), **LIMITS)["certrenew:md:soon.test"].status is \
        Status.CRIT


def test_mod_md_without_the_terms_agreed_is_critical(tmp_path, certs):
    root = httpd_tree(tmp_path, certs, "MDomain new.test\n", {"new.test": (5, None, None)})
    [r] = run(root).values()
    assert r.status is Status.CRIT and "terms of service are not agreed" in r.summary
    assert "MDCertificateAgreement accepted" in r.remedy
    assert "state 5 (missing information" in r.details


def test_mod_md_store_dir_from_the_config_is_used(tmp_path, certs):
    root = httpd_tree(tmp_path, certs, "MDCertificateAgreement accepted\nMDStoreDir state/md\n"
                      "MDomain good.test\n", {})
    (root / "etc/httpd/state/md/domains/good.test").mkdir(parents=True)
    (root / "etc/httpd/state/md/domains/good.test/md.json").write_text(
        md_json("good.test", ["good.test"], 2))
    shutil.copy(certs["new"][0], root / "etc/httpd/state/md/domains/good.test/pubcert.pem")
    [r] = run(root).values()
    assert r.status is Status.OK and "etc/httpd/state/md/domains/good.test" in r.details


def test_hostile_md_store_files_give_a_clear_result(tmp_path, certs):
    root = httpd_tree(tmp_path, certs, "MDCertificateAgreement accepted\nMDomain a.test\n"
                      "MDomain b.test\n", {"a.test": (2, "new", "[1, 2]"),
                                           "b.test": (2, "new", None)})
    md = root / "var/lib/httpd/md/domains/b.test/md.json"
    md.write_text('{"state": ' + "[" * 100000 + "]" * 100000 + "}")
    job = root / "var/lib/httpd/md/staging/a.test/job.json"
    job.write_text(json.dumps({"errors": "many", "last": [1], "finished": "yes",
                               "last-run": 42, "next-run": "not a date"}))
    r = run(root)
    assert r["certrenew:md:a.test"].status is Status.OK, r["certrenew:md:a.test"]
    b = r["certrenew:md:b.test"]
    assert b.status is Status.CRIT and "is not a JSON object" in b.summary
