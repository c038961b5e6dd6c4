"""What the two halves of the certrenew check share, in a module of its own so that neither
imports the other: the options, a PEM certificate's validity and fingerprint (by openssl), and
the comparison of the certificate an endpoint serves with the one on disk. The certbot half is
checks.certrenew (the check itself), the mod_md half checks.mdrenew."""

from __future__ import annotations

import re
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.schema import TEXT, CheckOptions, listing, number, option, table
from agent.model import Check, Result, Status

STARTTLS = {25: "smtp", 587: "smtp", 143: "imap", 110: "pop3"}


@dataclass(frozen=True)
class CertRenewOptions(CheckOptions):
    certbot_dir: str = option("/etc/letsencrypt", TEXT, "certbot's configuration directory")
    logs_dir: str = option("/var/log/letsencrypt", TEXT, "certbot's log directory "
                           "(letsencrypt.log and its rotations: one file per certbot run)")
    renew_run_hours: float = option(48.0, number(1, 24 * 365), "hours without a logged "
                                    "certbot renew run that mean the renewer does not run "
                                    "(the timer and cron job run it twice a day)")
    served: Mapping[str, Any] | None = option(
        None, table(TEXT, listing(TEXT)), 'lineage = ["host:port", ...]: where the '
        "certificate of each certbot lineage is served (STARTTLS on 25, 587, 143, 110)")
    httpd_conf: str = option("/etc/httpd/conf/httpd.conf", TEXT, "httpd's main config, "
                             "read (with its Includes) for mod_md's MDomain, "
                             "MDCertificateAgreement and MDStoreDir")
    md_activate_hours: float = option(24.0, number(0, 24 * 365), "hours a renewed mod_md "
                                      "certificate may wait in staging for httpd's restart")
    renew_warn_days: float = option(25.0, number(0, 365), "days left on a certificate on "
                                    "disk that mean renewal is failing (certbot renews at 30)")
    renew_crit_days: float = option(7.0, number(0, 365), "days left: CRIT")
    tls_timeout: float = option(10.0, number(0.1, 600), "seconds for one TLS handshake")
    timeout: float = option(60.0, number(0.1, 3600), "seconds before the check is UNKNOWN")
    interval: float = option(3600.0, number(1, 86400), "seconds between runs under steward "
                             "run")


def served_pem(endpoint: str, timeout: float) -> str:
    host, _, port_text = endpoint.rpartition(":")
    if not port_text.isdigit() or not host:
        raise ValueError(f"{endpoint}: not host:port")
    port = int(port_text)
    argv = ["openssl", "s_client", "-connect", endpoint, "-servername", host.strip("[]")]
    if port in STARTTLS:
        argv += ["-starttls", STARTTLS[port]]
    try:
        proc = subprocess.run(argv, input=b"", capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{endpoint}: no TLS handshake within {timeout:g} s") from None
    out = proc.stdout[:262144].decode(errors="replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    if not m:
        err = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        raise ValueError(f"{endpoint}: no certificate served"
                         + (f" ({err[-1][:120]})" if err else ""))
    return m.group(0)


def x509_dates(pem: str, timeout: float) -> tuple[float, float, str]:
    """(notBefore, notAfter, SHA-256 fingerprint) of a PEM certificate, by openssl."""
    out = subprocess.run(["openssl", "x509", "-noout", "-startdate", "-enddate",
                          "-fingerprint", "-sha256"], input=pem.encode(), capture_output=True,
                         timeout=timeout, check=False).stdout.decode(errors="replace")
    start = re.search(r"notBefore=(.+)", out)
    end = re.search(r"notAfter=(.+)", out)
    fp = re.search(r"Fingerprint=([0-9A-F:]+)", out)
    if not (start and end and fp):
        raise ValueError("not a PEM certificate")
    return (ssl.cert_time_to_seconds(start.group(1).strip()),
            ssl.cert_time_to_seconds(end.group(1).strip()), fp.group(1))


def served_result(check: Check, options: CertRenewOptions, name: str, endpoint: str, *,
                  disk_start: float, disk_fp: str, now: float, target: str = "") -> Result:
    """Whether ``endpoint`` serves the certificate on disk (issued ``disk_start``, SHA-256
    ``disk_fp``) of lineage or MD ``name``, its days left counted from ``now``: one Result
    under ``check``'s name."""
    target = target or f"{name}:{endpoint}"
    try:
        s_start, s_end, s_fp = x509_dates(served_pem(endpoint, options.tls_timeout),
                                          options.tls_timeout)
    except (ValueError, OSError, subprocess.SubprocessError) as e:
        return check.result(Status.CRIT, str(e)[:300], target=target,
                            remedy=f"check the service on {endpoint}")
    if s_fp == disk_fp:
        return check.result(Status.OK, f"{endpoint} serves the certificate on disk",
                            target=target)
    when = time.strftime("%Y-%m-%d", time.gmtime(s_start))
    if s_start < disk_start:
        left = (s_end - now) / 86400
        md = target.startswith("md:")
        return check.result(Status.CRIT if left < options.renew_crit_days else
                            Status.WARN, f"{endpoint} serves an older certificate (issued "
                            f"{when}, {left:.0f} days left) than the renewed one on disk: "
                            "reload the daemon", target=target,
                            details=f"served SHA-256 {s_fp[:23]}..., on disk "
                            f"{disk_fp[:23]}...",
                            remedy="reload the service (systemctl reload postfix/dovecot/"
                            "httpd) and " + ("have MDNotifyCmd reload it after each "
                            "renewal" if md else "add it to certbot's deploy hook "
                            f"(renew_hook in renewal/{name}.conf, or a script in "
                            "/etc/letsencrypt/renewal-hooks/deploy/)"))
    return check.result(Status.WARN, f"{endpoint} serves another certificate (issued "
                        f"{when}) than lineage {name}", target=target,
                        remedy=f"point the service at {name}'s live/ files, or fix "
                        "served in [checks.certrenew]")
