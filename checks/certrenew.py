"""Certificate renewal: certbot's lineages (``/etc/letsencrypt/renewal/*.conf`` and
``live/<name>/cert.pem``) are renewed by something (a systemd timer or a cron entry), the
certificate on disk is not close to expiry (certbot renews 30 days ahead: less means renewal
has been failing), and each service serving a lineage serves the certificate on disk — a
served certificate older than the file is the daemon not reloaded after the renewal. httpd's
mod_md domains are judged from its config and md's store (checks/mdrenew.py)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.schema import TEXT, CheckOptions, listing, number, option, table
from agent.env import Env
from agent.model import Check, Result, Status
from agent.system.commands import CommandError
from checks.x509 import x509_dates as _x509

STARTTLS = {25: "smtp", 587: "smtp", 143: "imap", 110: "pop3"}
TIMERS = ("certbot.timer", "certbot-renew.timer", "snap.certbot.renew.timer")
CRONS = ("etc/cron.d/certbot", "etc/cron.daily/certbot")


@dataclass(frozen=True)
class CertRenewOptions(CheckOptions):
    certbot_dir: str = option("/etc/letsencrypt", TEXT, "certbot's configuration directory")
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


class CertRenewCheck(Check):
    name = "certrenew"
    Options = CertRenewOptions
    options: CertRenewOptions

    def run(self, env: Env) -> Iterable[Result]:
        o = self.options
        base = env.sysroot / o.certbot_dir.lstrip("/")
        confs = sorted((base / "renewal").glob("*.conf"))[:100]
        results = [self._renewer(env)] if confs else []  # none: certbot not used here
        for conf in confs:
            results += self._lineage(conf.stem, base)
        from checks.mdrenew import md_results

        return results + md_results(self, env.sysroot / o.httpd_conf.lstrip("/"), env.sysroot)

    def _renewer(self, env: Env) -> Result:
        for unit in TIMERS:
            try:
                out = env.commands.run(["systemctl", "is-enabled", unit], timeout=10,
                                       ok_codes=(0, 1)).stdout.strip()
            except CommandError:
                continue
            if out == "enabled":
                return self.result(Status.OK, f"certbot renews from {unit}", target="renewer")
        for cron in CRONS:
            path = env.sysroot / cron
            if path.exists() and re.search(r"^[^#\n]*certbot", path.read_text(errors="replace")
                                           [:65536], re.M):
                return self.result(Status.OK, f"certbot renews from /{cron}", target="renewer",
                                   details=f"/{cron} runs certbot")
        return self.result(Status.CRIT, "nothing renews the certbot certificates (no enabled "
                           "timer, no cron entry)", target="renewer",
                           details=f"looked for: {', '.join(TIMERS)}; /{', /'.join(CRONS)}",
                           remedy="systemctl enable --now certbot-renew.timer (EL9, EPEL) or "
                           "certbot.timer (Debian)")

    def _lineage(self, name: str, base: Path) -> list[Result]:
        o = self.options
        cert = base / "live" / name / "cert.pem"
        try:
            pem = cert.read_text(errors="replace")[:65536]
            start, end, fp = _x509(pem, o.tls_timeout)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            return [self.result(Status.CRIT, f"lineage {name}: cannot read {cert}: "
                                f"{getattr(e, 'strerror', None) or e}", target=name,
                                remedy=f"certbot certificates; certbot renew --cert-name {name}")]
        days = (end - time.time()) / 86400
        details = [f"{cert}: from {time.strftime('%Y-%m-%d', time.gmtime(start))} to "
                   f"{time.strftime('%Y-%m-%d', time.gmtime(end))}, SHA-256 {fp[:23]}..."]
        if days < o.renew_warn_days:
            status = Status.CRIT if days < o.renew_crit_days else Status.WARN
            out = [self.result(status, f"lineage {name}: the certificate on disk expires in "
                               f"{days:.0f} days: renewal is failing", target=name,
                               details="\n".join(details),
                               remedy=f"certbot renew --cert-name {name} -v, fix what it "
                               "says; see /var/log/letsencrypt/letsencrypt.log")]
        else:
            out = [self.result(Status.OK, f"lineage {name}: valid {days:.0f} more days",
                               target=name, details="\n".join(details))]
        for endpoint in (o.served or {}).get(name, ())[:16]:
            out.append(self._served(name, endpoint, start, fp))
        return out

    def _served(self, name: str, endpoint: str, disk_start: float, disk_fp: str,
                target: str = "") -> Result:
        target = target or f"{name}:{endpoint}"
        try:
            s_start, _, s_fp = _x509(served_pem(endpoint, self.options.tls_timeout),
                                     self.options.tls_timeout)
        except (ValueError, OSError, subprocess.SubprocessError) as e:
            return self.result(Status.CRIT, str(e)[:300], target=target,
                               remedy=f"check the service on {endpoint}")
        if s_fp == disk_fp:
            return self.result(Status.OK, f"{endpoint} serves the certificate on disk",
                               target=target)
        when = time.strftime("%Y-%m-%d", time.gmtime(s_start))
        if s_start < disk_start:
            return self.result(Status.CRIT, f"{endpoint} serves an older certificate (issued "
                               f"{when}) than the renewed one on disk: the daemon was not "
                               "reloaded", target=target,
                               remedy="reload the service (systemctl reload postfix/dovecot/"
                               "httpd) and " + ("have MDNotifyCmd reload it after each "
                               "renewal" if target.startswith("md:") else "add it to "
                               f"certbot's deploy hook (renew_hook in renewal/{name}.conf)"))
        return self.result(Status.WARN, f"{endpoint} serves another certificate (issued "
                           f"{when}) than lineage {name}", target=target,
                           remedy=f"point the service at {name}'s live/ files, or fix "
                           "served in [checks.certrenew]")
