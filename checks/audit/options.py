"""``[checks.audit]``: when the audit runs under the daemon and the site's policy choices
(what may be open, who may manage the box, which rules are waived)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from agent.config.schema import (
    BOOLEAN,
    GLOBS,
    TEXT,
    CheckOptions,
    Parser,
    choice,
    listing,
    number,
    option,
)

_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?/(tcp|udp|sctp|dccp)$")


def _port(v: Any) -> str:
    m = _PORT.match(v) if isinstance(v, str) else None
    if not m or not 0 < int(m[1]) <= int(m[2] or m[1]) < 65536:
        raise ValueError("not a port like 8443/tcp or a range like 60000-61000/udp")
    return str(v)


def _network(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError("not an address or network like 192.0.2.0/24") from None
    return v


PORTS = listing(Parser(_port, '"PORT/PROTO" like "8443/tcp" or "60000-61000/udp"'))
NETWORKS = listing(Parser(_network, 'an address or network like "192.0.2.0/24"'))


@dataclass(frozen=True)
class AuditOptions(CheckOptions):
    """The security audit (``steward audit``; under ``steward run`` every ``interval``)."""

    interval: float = option(3600.0, number(1, 604800), "seconds between audits under "
                             "steward run")
    timeout: float = option(120.0, number(1, 3600), "seconds before the audit is UNKNOWN")
    min_score: int = option(0, number(0, 100, integer=True), "hardening score (percent) "
                            "below which the audit's summary result is WARN; 0: never")
    skip: tuple[str, ...] = option((), GLOBS, "rule ids (globs) waived on this machine, "
                                   "e.g. \"httpd.*\"")
    allow_services: tuple[str, ...] = option(
        (), listing(TEXT), "firewalld services allowed open beyond those of the enabled "
        "appliance services (smtp, submission, smtps, imaps, pop3s, http, https, dns, ssh)")
    allow_ports: tuple[str, ...] = option(
        (), PORTS, "ports allowed open in the firewall and listening on public addresses "
        "beyond the appliance's")
    admin_sources: tuple[str, ...] = option(
        (), NETWORKS, "networks management access (ssh, cockpit) is limited to; empty: "
        "not judged unless admin_interfaces is set")
    admin_interfaces: tuple[str, ...] = option(
        (), listing(TEXT), "interfaces management access is limited to (a second Ethernet "
        "port)")
    ssh_root_login: str = option(
        "prohibit-password", choice("no", "prohibit-password", "forced-commands-only"),
        "the most sshd's PermitRootLogin may allow")
    ssh_passwords: bool = option(False, BOOLEAN, "allow sshd PasswordAuthentication")
    secret_files: tuple[str, ...] = option(
        (), GLOBS, "more files (absolute paths or globs) that must be readable by root only, "
        "besides shadow, DKIM keys, TLS keys and steward's own config")
