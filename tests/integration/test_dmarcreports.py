"""The dmarcreports check on a real Maildir of DMARC aggregate reports in the RFC 7489
format (gzip, zip and plain XML attachments) and hostile ones: billion laughs, an external
entity, a zip bomb, a gzip bomb, an oversized report, the wrong schema, broken XML."""

from __future__ import annotations

import gzip
import io
import zipfile
from email.message import EmailMessage

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from checks.dmarcreports import DmarcReportCheck, DmarcReportOptions


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


def run(root, **kw):
    [check] = DmarcReportCheck.instances(DmarcReportOptions(maildir=str(root), **kw),
                                         Env(Config("<test>")))
    [r] = check.run(Env(Config("<test>")))
    return r


def test_reports_are_summarized_by_source(maildir):
    r = run(maildir)
    assert r.status is Status.OK, r.details
    assert r.summary == ("3 report(s): 165 message(s) from 3 source(s), none failing with "
                         "volume")
    assert "192.0.2.10: 160 message(s), 0 failing DMARC (none 160)" in r.details
    assert "198.51.100.7: 3 message(s), 3 failing DMARC (reject 3)" in r.details


def test_a_source_failing_with_volume_warns(maildir):
    (maildir / "new" / "4.eml").write_bytes(mail("big.xml.gz", gzip.compress(report(
        [("203.0.113.66", 500, "none", "fail", "fail")])), "application/gzip"))
    r = run(maildir)
    assert r.status is Status.WARN and "203.0.113.66 sent 502 message(s) failing" in r.summary
    assert "p=reject" in r.remedy


def test_hostile_reports_are_refused_and_the_rest_still_counted(maildir):
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


def test_only_hostile_reports_warn(tmp_path):
    (tmp_path / "laughs.xml").write_bytes(LAUGHS)
    r = run(tmp_path)
    assert r.status is Status.WARN and "every report was refused (1)" in r.summary
