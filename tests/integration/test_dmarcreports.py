"""The dmarcreports check on a real Maildir of DMARC aggregate reports in the RFC 7489
format (gzip, zip and plain XML attachments) and hostile ones: billion laughs, an external
entity, a zip bomb, a gzip bomb, an oversized report, the wrong schema, broken XML. Source
names come from PTR records of a real BIND on loopback; the sources seen are kept in a state
directory across runs; the report sender's schedule is a real cron file and its log."""

from __future__ import annotations

import gzip
import io
import os
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.dmarcreports import DmarcReportCheck, DmarcReportOptions
from tests.dnsserver import bind_server, named_missing, zone_text

pytestmark = pytest.mark.skipif(bool(named_missing()), reason=named_missing() or "-")


@pytest.fixture(scope="module")
def resolver(tmp_path_factory):
    zones = {
        "2.0.192.in-addr.arpa": zone_text("2.0.192.in-addr.arpa", "10 PTR mail.example.test."),
        "113.0.203.in-addr.arpa": zone_text("113.0.203.in-addr.arpa",
                                            "66 PTR host66.spoofer.test."),
        "100.51.198.in-addr.arpa": zone_text("100.51.198.in-addr.arpa", ""),
    }
    with bind_server(zones, tmp_path_factory.mktemp("bind")) as (host, port):
        yield f"{host}:{port}"


def report(rows) -> bytes:
    records = "".join(f"""
  <record>
    <row><source_ip>{ip}</source_ip><count>{n}</count>
      <policy_evaluated><disposition>{disp}</disposition><dkim>{dkim}</dkim><spf>{spf}</spf>
      </policy_evaluated></row>
    <identifiers><header_from>example.test</header_from></identifiers>
    <auth_results><spf><domain>example.test</domain><result>{spf}</result></spf></auth_results>
  </record>""" for ip, n, disp, dkim, spf in rows)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<feedback>
  <report_metadata><org_name>google.com</org_name><email>noreply-dmarc-support@google.com</email>
    <report_id>{abs(hash(str(rows)))}</report_id>
    <date_range><begin>1765065600</begin><end>1765151999</end></date_range></report_metadata>
  <policy_published><domain>example.test</domain><adkim>r</adkim><aspf>r</aspf><p>reject</p>
    <sp>reject</sp><pct>100</pct></policy_published>{records}
</feedback>
""".encode()


def mail(name: str, data: bytes, ctype: str) -> bytes:
    m = EmailMessage()
    m["From"] = "noreply-dmarc-support@google.com"
    m["To"] = "dmarc@example.test"
    m["Subject"] = f"Report domain: example.test Submitter: google.com Report-ID: {name}"
    m.set_content("This is an aggregate report from google.com.")
    main, sub = ctype.split("/")
    m.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return bytes(m)


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<feedback><record><row><source_ip>&lol3;</source_ip><count>1</count></row></record></feedback>"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<feedback><record><row><source_ip>&x;</source_ip><count>1</count></row></record></feedback>"""


@pytest.fixture
def maildir(tmp_path):
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    good = report([("192.0.2.10", 120, "none", "pass", "pass"),
                   ("198.51.100.7", 3, "reject", "fail", "fail")])
    (md / "cur" / "1.eml:2,S").write_bytes(
        mail("google.com!example.test!1!2.xml.gz", gzip.compress(good), "application/gzip"))
    (md / "cur" / "2.eml:2,S").write_bytes(mail(
        "outlook.com!example.test!1!2.xml.zip",
        zipped("r.xml", report([("192.0.2.10", 40, "none", "pass", "fail")])),
        "application/zip"))
    (md / "new" / "3.eml").write_bytes(mail("yahoo.xml", report(
        [("203.0.113.66", 2, "none", "fail", "fail")]), "text/xml"))
    return md


def results(root, *, resolver, state=None, sysroot="/", **kw):
    kw.setdefault("resolvers", (resolver,))
    kw.setdefault("ptr_timeout", 0.5)
    env = Env(Config("<test>"), sysroot=Path(sysroot), state_dir=Path(state or "/nonexistent"),
              keeps_state=state is not None)
    [check] = DmarcReportCheck.instances(
        DmarcReportOptions(maildir=str(root) if root else None, **kw), env)
    return list(check.run(env))


@pytest.fixture
def run(resolver):
    def run(root, **kw):
        [r] = results(root, resolver=resolver, **kw)
        return r
    return run


def test_reports_are_summarized_by_source_with_their_ptr_names(maildir, run):
    r = run(maildir)
    assert r.status is Status.OK, r.details
    assert r.summary == ("3 report(s): 165 message(s) from 3 source(s), none failing with "
                         "volume")
    assert ("192.0.2.10 (mail.example.test): 160 message(s), 0 failing DMARC (none 160)"
            in r.details)
    assert "198.51.100.7 (no PTR): 3 message(s), 3 failing DMARC (reject 3)" in r.details


def big_spoofer(maildir, n=500):
    (maildir / "new" / f"{n}.eml").write_bytes(mail("big.xml.gz", gzip.compress(report(
        [("203.0.113.66", n, "none", "fail", "fail")])), "application/gzip"))


def test_a_new_source_failing_with_volume_warns_with_ip_ptr_and_count(maildir, run,
                                                                     tmp_path):
    big_spoofer(maildir)
    state = tmp_path / "state"
    r = run(maildir, state=state)
    assert r.status is Status.WARN, r
    assert r.summary == ("new source 203.0.113.66 (host66.spoofer.test) failing DMARC "
                         "alignment: 502 message(s)")
    assert "p=reject" in r.remedy
    seen = (state / "dmarcreports.json").read_text()
    assert "203.0.113.66" in seen and "192.0.2.10" in seen
    # the next run knows it: still a WARN, but no longer new
    r = run(maildir, state=state)
    assert r.status is Status.WARN and r.summary.startswith("known source 203.0.113.66 ("), r
    # a second spoofer appearing later is new again, and the known one is counted
    (maildir / "new" / "5.eml").write_bytes(mail("b.xml", report(
        [("192.0.2.99", 40, "none", "fail", "fail")]), "text/xml"))
    r = run(maildir, state=state)
    assert r.summary == ("new source 192.0.2.99 (no PTR) failing DMARC alignment: 40 "
                         "message(s); 1 known failing"), r


def test_a_manual_run_does_not_record_sources(maildir, run, tmp_path):
    big_spoofer(maildir)
    [r] = results(maildir, resolver="127.0.0.1:9", ptr_timeout=0.2)  # dead resolver
    assert r.status is Status.WARN and "203.0.113.66 (PTR lookup failed)" in r.summary


def test_the_report_sender_scheduled_in_cron_is_judged_by_its_log(tmp_path, resolver):
    root = tmp_path / "root"
    (root / "etc/cron.d").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    (root / "etc/cron.d/rspamd").write_text(
        "# rspamd DMARC reports\n"
        "5 0 * * * _rspamd /usr/bin/rspamadm dmarc_report >> /var/log/dmarc_report.log 2>&1\n")
    [r] = results(None, resolver=resolver, sysroot=root)
    assert r.check == "dmarcreports:sender" and r.status is Status.WARN
    assert r.summary == "rspamadm dmarc_report never ran: no /var/log/dmarc_report.log"
    log = root / "var/log/dmarc_report.log"
    log.write_text("dmarc_report: sent 3 reports\n")
    [r] = results(None, resolver=resolver, sysroot=root)
    assert r.status is Status.OK and r.summary.startswith("rspamadm dmarc_report ran 0.0 h"), r
    assert "/etc/cron.d/rspamd" in r.details
    old = time.time() - 30 * 3600
    os.utime(log, (old, old))
    [r] = results(None, resolver=resolver, sysroot=root)
    assert r.status is Status.WARN and r.summary == (
        "rspamadm dmarc_report last ran 30 h ago (/var/log/dmarc_report.log), more than 26 h")
    # OpenDMARC's sender without a redirect: no evidence unless sender_evidence says where
    (root / "etc/cron.d/rspamd").unlink()
    (root / "etc/cron.d/opendmarc").write_text(
        "0 1 * * * opendmarc /usr/sbin/opendmarc-reports --dbhost=localhost\n")
    [r] = results(None, resolver=resolver, sysroot=root)
    assert r.status is Status.WARN and "leaves no evidence of running" in r.summary
    assert "sender_evidence" in r.remedy
    [r] = results(None, resolver=resolver, sysroot=root,
                  sender_evidence="/var/log/dmarc_report.log", sender_max_age=48)
    assert r.status is Status.OK and r.summary.startswith("opendmarc-reports ran 30.0 h"), r


def test_no_sender_and_no_maildir_yields_nothing(tmp_path, resolver):
    assert results(None, resolver=resolver, sysroot=tmp_path) == []


def test_hostile_reports_are_refused_and_the_rest_still_counted(maildir, run):
    hostile = {
        "laughs.eml": mail("laughs.xml", LAUGHS, "text/xml"),
        "xxe.eml": mail("xxe.xml", XXE, "text/xml"),
        "zipbomb.eml": mail("bomb.zip", zipped("r.xml", b"<" + b"a" * 50_000_000),
                            "application/zip"),
        "gzbomb.eml": mail("bomb.xml.gz", gzip.compress(b" " * 50_000_000), "application/gzip"),
        "schema.eml": mail("page.xml", b"<html><body>hello</body></html>", "text/xml"),
        "broken.eml": mail("broken.xml", b"<feedback><record>", "text/xml"),
        "nocount.eml": mail("nc.xml", b"<feedback><record><row><source_ip>1.2.3.4</source_ip>"
                            b"<count>many</count></row></record></feedback>", "text/xml"),
    }
    for name, data in hostile.items():
        (maildir / "new" / name).write_bytes(data)
    (maildir / "new" / "huge.xml").write_bytes(b"<feedback>" + b" " * 300_000 + b"</feedback>")
    r = run(maildir, max_report_bytes=200_000)
    assert r.status is Status.OK and r.summary.startswith("3 report(s): 165 message(s)"), r
    d = r.details
    assert "8 refused" in d
    assert d.count("declares a DTD or entities") == 2
    assert "bomb.zip: zip member r.xml would expand to 50000001 bytes" in d
    assert "bomb.xml.gz (gunzipped) is over 200000 bytes" in d
    assert "not a DMARC aggregate report (no <feedback> root)" in d
    assert "not well-formed XML" in d and "without a numeric <count>" in d
    assert "huge.xml is over 200000 bytes" in d


def test_only_hostile_reports_warn(tmp_path, run):
    (tmp_path / "laughs.xml").write_bytes(LAUGHS)
    r = run(tmp_path)
    assert r.status is Status.WARN and "every report was refused (1)" in r.summary
