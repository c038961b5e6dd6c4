"""certbot's renewal machinery as certbot itself lays it out: Debian's certbot obtains and
renews a certificate from a real ACME server on loopback (Debian's pebble, which skips
challenge validation with PEBBLE_VA_ALWAYS_VALID), so the lineage (renewal/<name>.conf,
archive/<name>/cert<N>.pem, live/ links) and letsencrypt.log are certbot's own; a renewal
against a dead ACME server writes a real failure. A TLS server on loopback keeps serving the
certificate from before the renewal (a daemon not reloaded). Both log layouts are read:
Debian's (max-log-backups = 0 in /etc/letsencrypt/cli.ini, runs appended, logrotate's .gz)
and upstream's (one file per run, --max-log-backups)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.system.clock import Clock
from checks.certbotlog import renew_runs
from checks.certrenew import CertRenewCheck, CertRenewOptions
from tests.mailserver import make_ca
from tests.netutil import free_port
from tests.tlsservers import WebServer, issue_cert

CERTBOT = shutil.which("certbot")
PEBBLE = shutil.which("pebble")
pytestmark = pytest.mark.skipif(CERTBOT is None or PEBBLE is None,
                                reason="needs certbot and pebble (apt-get install certbot "
                                "pebble)")
NAME = "mail.example.test"
# Debian's /etc/cron.d/certbot line, as the package installs it
DEBIAN_CRON = ("0 */12 * * * root test -x /usr/bin/certbot -a \\! -d /run/systemd/system "
               "&& perl -e 'sleep int(rand(43200))' && certbot -q renew "
               "--no-random-sleep-on-renew\n")


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    d = tmp_path_factory.mktemp("acme")
    ca, _, _ = make_ca(d / "ca")
    cert, key = issue_cert(ca, 30, "pebble")
    port = free_port()
    (d / "pebble.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress":
        f"127.0.0.1:{free_port()}", "certificate": str(cert), "privateKey": str(key),
        "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "certificateValidityPeriod": 90 * 86400}}))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "0",
           "PEBBLE_VA_NOSLEEP": "1"}
    log = (d / "pebble.log").open("w")
    proc = subprocess.Popen([PEBBLE, "-config", str(d / "pebble.json")], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while "Listening on" not in (d / "pebble.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (d / "pebble.log").read_text()
            time.sleep(0.05)
        yield {"server": f"https://127.0.0.1:{port}/dir", "ca": ca, "dir": d}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def certbot(acme, root: Path, *args: str, server: str = "") -> subprocess.CompletedProcess:
    """Debian's certbot on the tree ``root`` (its etc/letsencrypt, var/log/letsencrypt)."""
    argv = [CERTBOT, *args, "--non-interactive", "--no-random-sleep-on-renew",
            "--config-dir", str(root / "etc/letsencrypt"), "--work-dir", str(root / "work"),
            "--logs-dir", str(root / "var/log/letsencrypt"),
            "--server", server or acme["server"]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "REQUESTS_CA_BUNDLE": str(acme["ca"])})


@pytest.fixture(scope="module")
def renewed(acme):
    """A lineage obtained, then renewed once (cert1 -> cert2), by certbot itself."""
    root = acme["dir"] / "renewed"
    p = certbot(acme, root, "certonly", "--standalone", "--http-01-address", "127.0.0.1",
                "--http-01-port", str(free_port()), "-d", NAME, "--agree-tos",
                "--register-unsafely-without-email")
    assert p.returncode == 0, p.stderr
    time.sleep(1.1)  # notBefore has a resolution of a second
    p = certbot(acme, root, "renew", "--force-renewal")
    assert p.returncode == 0, p.stderr
    p = certbot(acme, root, "renew")  # not due: the newest run says so
    assert p.returncode == 0, p.stderr
    return root


def clone(src: Path, dst: Path) -> Path:
    """A copy of a certbot tree; its renewal confs name their own paths, so those move too."""
    shutil.copytree(src, dst, symlinks=True)
    for conf in (dst / "etc/letsencrypt/renewal").glob("*.conf"):
        conf.write_text(conf.read_text().replace(str(src), str(dst)))
    return dst


def run(root: Path, clock: Clock | None = None, **kw) -> dict:
    env = Env(Config("<test>"), sysroot=root, clock=clock or Clock())
    [check] = CertRenewCheck.instances(CertRenewOptions(**kw), env)
    return {r.check: r for r in check.run(env)}


def cron(root: Path, systemd: bool = False) -> None:
    (root / "etc/cron.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/cron.d/certbot").write_text(DEBIAN_CRON)
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)


def test_renewed_lineage_and_a_daemon_not_reloaded(renewed, tmp_path):
    root = clone(renewed, tmp_path / "root")
    cron(root)
    archive = root / "etc/letsencrypt/archive" / NAME
    assert os.readlink(root / "etc/letsencrypt/live" / NAME / "cert.pem").endswith("cert2.pem")
    with WebServer({}, cert=archive / "fullchain1.pem", key=archive / "privkey1.pem") as old, \
            WebServer({}, cert=archive / "fullchain2.pem", key=archive / "privkey2.pem") as new:
        r = run(root, served={NAME: [f"localhost:{old.port}", f"localhost:{new.port}"]})
    assert r["certrenew:renewer"].status is Status.OK
    assert r["certrenew:renewer"].summary == "certbot renews from /etc/cron.d/certbot"
    last = r["certrenew:last-run"]
    assert last.status is Status.OK and "succeeded: nothing due" in last.summary, last
    assert f"{NAME}: skipped" in last.details
    lineage = r[f"certrenew:{NAME}"]
    assert lineage.status is Status.OK and "valid 90 more days" in lineage.summary, lineage
    assert f"archive/{NAME}/cert2.pem" in lineage.details
    assert "last renew run" in lineage.details and ": skipped" in lineage.details
    stale = r[f"certrenew:{NAME}:localhost:{old.port}"]
    assert stale.status is Status.WARN, stale
    assert "serves an older certificate" in stale.summary and "reload the daemon" in \
        stale.summary and "90 days left" in stale.summary
    assert "renewal-hooks/deploy" in stale.remedy
    fresh = r[f"certrenew:{NAME}:localhost:{new.port}"]
    assert fresh.status is Status.OK and "serves the certificate on disk" in fresh.summary


def test_the_renewal_itself_is_seen_in_the_log(renewed, tmp_path):
    root = clone(renewed, tmp_path / "root")
    [not_due, success] = renew_runs(root / "var/log/letsencrypt", want=2)[:2]
    assert not_due.outcomes == {NAME: "skipped"} and not_due.finished
    assert success.outcomes == {NAME: "success"} and success.processed == [NAME]
    assert "--force-renewal" in success.arguments


def test_failed_renewal_from_certbots_own_log(acme, renewed, tmp_path):
    root = clone(renewed, tmp_path / "root")
    cron(root)
    # the ACME server goes away (its account kept, as for a CA that is down)
    dead_port = free_port()
    accounts = root / "etc/letsencrypt/accounts"
    [live_dir] = accounts.iterdir()
    live_dir.rename(accounts / f"127.0.0.1:{dead_port}")
    p = certbot(acme, root, "renew", "--force-renewal",
                server=f"https://127.0.0.1:{dead_port}/dir")
    assert p.returncode == 1 and "Failed to renew certificate" in p.stderr, p.stderr
    r = run(root)
    last = r["certrenew:last-run"]
    assert last.status is Status.WARN, last
    assert last.summary.startswith("certbot's last renew run (") and \
        f"failed for {NAME}: " in last.summary and "Connection refused" in last.summary
    assert f"certbot renew --cert-name {NAME} -v" in last.remedy
    lineage = r[f"certrenew:{NAME}"]
    assert lineage.status is Status.WARN and "its last renewal attempt failed" in \
        lineage.summary and "Connection refused" in lineage.summary, lineage


def test_debian_cron_under_systemd_runs_nothing(renewed, tmp_path):
    root = clone(renewed, tmp_path / "root")
    cron(root, systemd=True)
    r = run(root)["certrenew:renewer"]
    assert r.status is Status.CRIT and "nothing renews" in r.summary, r
    assert "/etc/cron.d/certbot runs certbot only when systemd does not run" in r.details


def test_no_renew_run_for_days_warns(renewed, tmp_path):
    class Later(Clock):
        def now(self) -> float:
            return time.time() + 3 * 86400

    root = clone(renewed, tmp_path / "root")
    last = run(root, clock=Later())["certrenew:last-run"]
    assert last.status is Status.WARN and "h ago (over 48): the renewer does not run" in \
        last.summary, last


def test_upstream_layout_one_file_per_run(acme, renewed, tmp_path):
    """--max-log-backups (upstream's default is 1000) makes certbot rotate at each start."""
    root = clone(renewed, tmp_path / "root")
    logs = root / "var/log/letsencrypt"
    p = certbot(acme, root, "renew", "--max-log-backups", "5")
    assert p.returncode == 0, p.stderr
    p = certbot(acme, root, "certificates", "--max-log-backups", "5")
    assert p.returncode == 0, p.stderr
    assert (logs / "letsencrypt.log.2").exists()
    [newest] = renew_runs(logs)[:1]
    assert newest.path.name == "letsencrypt.log.1" and newest.outcomes == {NAME: "skipped"}


def test_debian_layout_rotated_by_logrotate_and_hostile_logs(renewed, tmp_path):
    root = clone(renewed, tmp_path / "root")
    logs = root / "var/log/letsencrypt"
    real = (logs / "letsencrypt.log").read_bytes()
    # logrotate moved last week's runs to .1.gz; this week's log holds another command's run
    with gzip.open(logs / "letsencrypt.log.1.gz", "wb") as f:
        f.write(real)
    first_run = real.split(b"\n", 1)[0].decode()
    (logs / "letsencrypt.log").write_text(first_run + "\n" + first_run.replace(
        "certbot version: 2.1.0", "Arguments: ['certificates']") + "\n")
    [newest] = renew_runs(logs)[:1]
    assert newest.path.name == "letsencrypt.log.1.gz" and newest.outcomes == {NAME: "skipped"}
    # a huge current log: 200 MB of noise after the real runs; only its end is read
    with (logs / "letsencrypt.log").open("wb") as f:
        f.write(real)
        f.truncate(200 * 1024 * 1024)
    # and a gzip bomb in the rotation: 256 MB of zeros in 250 kB
    with gzip.open(logs / "letsencrypt.log.2.gz", "wb", compresslevel=1) as f:
        for _ in range(256):
            f.write(b"\0" * (1024 * 1024))
    (logs / "letsencrypt.log.1.gz").unlink()
    for conf in (root / "etc/letsencrypt/renewal").glob("*.conf"):
        os.utime(conf, (time.time() - 3 * 86400,) * 2)  # not a new lineage
    t0 = time.monotonic()
    r = run(root)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed
    last = r["certrenew:last-run"]
    assert last.status is Status.WARN and "no certbot renew run" in last.summary, last
