"""certbot's log and rndc's answers as the real programs wrote them (captured from the runs of
tests/integration/test_certbot.py and test_maildns_bindsign.py, paths made /etc/...), parsed
without certbot or BIND: this is what runs under the Python 3.9 root. The fixture log holds
Debian's appended layout: certonly, renew --force-renewal (success), renew (not due),
renew against a dead ACME server (failure), each wrapped "Processing" line included."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

from checks.certbotlog import log_files, renew_runs
from checks.maildns.bindsign import _fields, _when, parse_keys

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures/certbot/letsencrypt.log"
NAME = "mail.example.test"


def test_the_runs_of_a_real_log_newest_first(tmp_path):
    (tmp_path / "letsencrypt.log").write_bytes(FIXTURE.read_bytes())
    runs = renew_runs(tmp_path, want=10)
    assert [r.outcomes for r in runs] == [{NAME: "failure"}, {NAME: "skipped"},
                                          {NAME: "success"}]  # certonly is no renew run
    failed = runs[0]
    assert failed.errors[NAME] == "Requesting 127.0.0.1/dir: Connection refused"
    assert failed.processed == [NAME] and failed.finished
    assert "--force-renewal" in failed.arguments
    assert failed.started.startswith("20") and failed.ended >= time.mktime(
        time.strptime(failed.started, "%Y-%m-%d %H:%M:%S"))


def test_rotations_are_read_in_order_and_dry_runs_skipped(tmp_path):
    real = FIXTURE.read_text()
    dry = real.replace("'--force-renewal'", "'--dry-run'")
    (tmp_path / "letsencrypt.log").write_text(dry.split("certbot version")[0] + "\n")
    with gzip.open(tmp_path / "letsencrypt.log.1.gz", "wt") as f:
        f.write(real)
    (tmp_path / "letsencrypt.log.2").write_text("")
    (tmp_path / "letsencrypt.log.old").write_text(real)  # not certbot's naming: ignored
    assert [p.name for p in log_files(tmp_path)] == ["letsencrypt.log", "letsencrypt.log.1.gz",
                                                     "letsencrypt.log.2"]
    [newest] = renew_runs(tmp_path)[:1]
    assert newest.path.name == "letsencrypt.log.1.gz" and newest.outcomes == {NAME: "failure"}
    # every --force-renewal run made a --dry-run one: those are passed over
    (tmp_path / "letsencrypt.log.1.gz").unlink()
    (tmp_path / "letsencrypt.log").write_text(dry)
    assert [r.outcomes for r in renew_runs(tmp_path, want=5)] == [{NAME: "skipped"}]


def test_hostile_logs_cost_a_bounded_read(tmp_path):
    with (tmp_path / "letsencrypt.log").open("wb") as f:
        f.write(FIXTURE.read_bytes())
        f.write(b"x" * (8 * 1024 * 1024))  # one 8 MB line after the runs
    with gzip.open(tmp_path / "letsencrypt.log.1.gz", "wb", compresslevel=1) as f:
        for _ in range(64):  # 64 MB of zeros: inflated only up to the cap
            f.write(b"\0" * (1024 * 1024))
    (tmp_path / "letsencrypt.log.2.gz").write_bytes(b"\x1f\x8b not gzip at all")
    (tmp_path / "letsencrypt.log.3").write_text(FIXTURE.read_text())
    t0 = time.monotonic()
    runs = renew_runs(tmp_path)
    assert time.monotonic() - t0 < 5
    assert runs and runs[0].path.name == "letsencrypt.log.3"


# rndc's answers, as BIND 9.18 gave them for a zone under dnssec-policy default
ZONESTATUS = """name: auto.test
type: primary
files: /var/named/auto.test.zone
serial: 1
signed serial: 3
nodes: 3
last loaded: Mon, 07 Dec 2026 14:00:06 GMT
secure: yes
inline signing: yes
key maintenance: automatic
next key event: Mon, 07 Dec 2026 16:05:06 GMT
next resign node: ns.auto.test/NSEC
next resign time: Wed, 16 Dec 2026 12:47:46 GMT
dynamic: no
reconfigurable via modzone: no
"""
DNSSEC_STATUS = """dnssec-policy: default
current time:  Mon Dec  7 14:00:09 2026

key: 64010 (ECDSAP256SHA256), CSK
  published:      yes - since Mon Dec  7 14:00:06 2026
  key signing:    yes - since Mon Dec  7 14:00:06 2026
  zone signing:   yes - since Mon Dec  7 14:00:06 2026

  No rollover scheduled
  - goal:           omnipresent
  - dnskey:         rumoured
  - ds:             hidden
  - zone rrsig:     rumoured
  - key rrsig:      rumoured
"""


def test_rndc_answers_parse():
    zs = _fields(ZONESTATUS)
    assert zs["secure"] == "yes" and zs["key maintenance"] == "automatic"
    assert _when(zs["next resign time"]) == 1797425266.0
    assert _when("not a date") is None
    assert _fields(DNSSEC_STATUS)["dnssec-policy"] == "default"
    assert parse_keys(DNSSEC_STATUS) == [{"id": "64010", "alg": "ECDSAP256SHA256",
                                          "role": "CSK", "signing": "yes",
                                          "rollover": "No rollover scheduled",
                                          "ds": "hidden"}]
    hostile = "key: 1 (RSASHA256), KSK\n" * 5000 + "x" * 100000
    assert len(parse_keys(hostile)) == 16
    assert len(_fields("a: b\n" * 100000 + "secure: yes\n")) == 1
