"""Certificate inspection shared by the SMTP, IMAP, POP3 and HTTP probes: a verifying TLS
context, what the peer certificate says (subject, issuer, names, expiry), whether it names the
host, and how many days it has left judged against Nagios ranges.

Verification is never switched off. Only the hostname check is done here rather than inside the
handshake, so that "wrong name" is reported as such, with the names the certificate does carry,
instead of as a bare handshake failure.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.model import Metric, Status, worst
from agent.ranges import Range, judge

DAY = 86400.0
EXPIRY_WARN = Range.parse("21:")  # alert with fewer than 21 days left
EXPIRY_CRIT = Range.parse("7:")


def context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the chain (against ``ca_file``, or the system CAs);
    the hostname is matched by ``name_matches`` after the handshake."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED  # check_hostname=False must not loosen this
    return ctx


@dataclass(frozen=True)
class CertInfo:
    subject: str
    issuer: str
    names: tuple[str, ...]  # subjectAltName entries, "DNS:x" / "IP Address:y"
    not_after: float  # epoch seconds
    serial: str
    protocol: str  # negotiated TLS version
    cipher: str

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / DAY

    def describe(self) -> str:
        expiry = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.not_after))
        return (f"subject: {self.subject}\nissuer: {self.issuer}\n"
                f"names: {', '.join(self.names) or '(none)'}\nexpires: {expiry}\n"
                f"serial: {self.serial}\ntls: {self.protocol} {self.cipher}")


def _dn(rdns: Any) -> str:
    return ", ".join(f"{k}={v}" for rdn in rdns for k, v in rdn)


def cert_info(sock: ssl.SSLSocket) -> CertInfo:
    """What the verified peer certificate says (getpeercert() is only filled after
    verification, which our contexts always require)."""
    cert: dict[str, Any] = sock.getpeercert() or {}
    cipher = sock.cipher()
    return CertInfo(
        subject=_dn(cert.get("subject", ())), issuer=_dn(cert.get("issuer", ())),
        names=tuple(f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())),
        not_after=float(ssl.cert_time_to_seconds(cert["notAfter"])),
        serial=str(cert.get("serialNumber", "")), protocol=sock.version() or "",
        cipher=cipher[0] if cipher else "")


def name_matches(info: CertInfo, host: str) -> bool:
    """RFC 6125 as browsers and OpenSSL apply it: an IP address matches only an IP entry;
    a name matches a DNS entry exactly or by a whole-label wildcard on the left
    (``*.example.com``), case-insensitively; the subject CN is not consulted."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        addr = None
    for entry in info.names:
        kind, _, value = entry.partition(":")
        if addr is not None:
            if kind == "IP Address":
                try:
                    if ipaddress.ip_address(value.strip()) == addr:
                        return True
                except ValueError:
                    continue
        elif kind == "DNS" and _dns_match(value, host):
            return True
    return False


def _dns_match(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, rest = host.partition(".")
    # The wildcard covers exactly one label and never a public suffix-like "*.com".
    return bool(head) and rest == pattern[2:] and "." in rest


def verify_reason(e: ssl.SSLError) -> str:
    """A readable reason from a failed handshake; verification failures say
    "certificate verify failed: <OpenSSL's reason>"."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message or e.reason}"
    return f"TLS handshake failed: {e.reason or e}"


@dataclass(frozen=True)
class Finding:
    status: Status
    text: str
    remedy: str = ""
    unresponsive: bool = False  # the service does not answer: a restart may cure it


def restartable(findings: list[Finding]) -> bool:
    """A probe's failure is worth a restart only when every failing finding is the service not
    answering; a bad certificate or a policy finding would come back after any restart."""
    bad = [f for f in findings if f.status is Status.CRIT]
    return bool(bad) and all(f.unresponsive for f in bad)


def judge_cert(info: CertInfo, host: str, warn: Range | None = EXPIRY_WARN,
               crit: Range | None = EXPIRY_CRIT, *, now: float,
               ) -> tuple[list[Finding], Metric]:
    """Findings about a verified certificate for ``host``: name and the days it has left
    at ``now``."""
    findings: list[Finding] = []
    if not name_matches(info, host):
        findings.append(Finding(
            Status.CRIT, f"certificate does not name {host} (it names "
            f"{', '.join(info.names) or 'nothing in subjectAltName'})",
            f"install a certificate whose subjectAltName includes {host}, or set "
            "tls_hostname to the name clients use"))
    days = round(info.days_left(now), 1)
    status = Status(judge(days, warn, crit))
    expiry = time.strftime("%Y-%m-%d", time.gmtime(info.not_after))
    findings.append(Finding(
        status, f"certificate expires in {round(days):d} days ({expiry})",
        "" if status is Status.OK else
        f"renew the certificate for {host} (issuer: {info.issuer}) and reload the service"))
    metric = Metric("cert_days_left", days, "", warn.text if warn else "",
                    crit.text if crit else "")
    return findings, metric


def handshake(sock: socket.socket, ctx: ssl.SSLContext, server_name: str,
              ) -> tuple[ssl.SSLSocket | None, Finding | None]:
    """Wrap a connected socket (implicit TLS, or after STARTTLS) and verify the chain.
    Returns the TLS socket, or None and a CRIT finding saying why it failed."""
    sni = None if _is_ip(server_name) else server_name  # SNI must not carry an address
    try:
        return ctx.wrap_socket(sock, server_hostname=sni), None
    except ssl.SSLCertVerificationError as e:
        return None, Finding(Status.CRIT, verify_reason(e),
                             "the chain must verify against ca_file (or the system CAs): "
                             "install the intermediate certificates, renew an expired one")
    except ssl.SSLError as e:
        return None, Finding(Status.CRIT, verify_reason(e),
                             "compare the server's TLS settings (protocols, ciphers) with "
                             "what this client offers")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def probe_certificate(host: str, port: int, *, server_name: str, ca_file: str | None,
                      timeout: float, warn: Range | None = EXPIRY_WARN,
                      crit: Range | None = EXPIRY_CRIT, now: float,
                      ) -> tuple[list[Finding], list[Metric], CertInfo | None]:
    """Implicit-TLS certificate inspection on its own socket (what HTTPS needs, as requests
    does not expose the peer certificate)."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return [Finding(Status.CRIT, f"cannot connect to {host}:{port}: {e.strerror or e}",
                        unresponsive=True)], [], None
    with raw:
        tls, failed = handshake(raw, context(ca_file), server_name)
        if tls is None:
            assert failed is not None
            return [failed], [], None
        with tls:
            info = cert_info(tls)
    findings, metric = judge_cert(info, server_name, warn, crit, now=now)
    return findings, [metric], info


def summarize(findings: list[Finding], ok_text: str | Callable[[], str],
              ) -> tuple[Status, str, str]:
    """Status, summary and remedy for a list of findings: the problems at the worst level
    make the summary, or ``ok_text`` when there are none."""
    status = worst(f.status for f in findings)
    if status is Status.OK:
        return status, ok_text() if callable(ok_text) else ok_text, ""
    bad = [f for f in findings if f.status is status]
    remedies = [f.remedy for f in bad if f.remedy]
    return status, "; ".join(f.text for f in bad), "\n".join(dict.fromkeys(remedies))
