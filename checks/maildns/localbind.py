"""Whether a loopback resolver is this appliance's own BIND serving the domain's zone.

Only then do the record findings depend on ``service:named``: a loopback resolver may as well
be unbound, dnsmasq or systemd-resolved forwarding to the world. Two things must hold: the
resolver answers authoritatively (the AA bit) for the domain, and the process listening on its
UDP port is named (BIND's daemon on EL9 and Debian alike, the bind9 package's too).
"""

from __future__ import annotations

import ipaddress

DAEMONS = ("named",)  # the process name of BIND (named, named-chroot and bind9 units all run it)


def authoritative(host: str, port: int, domain: str, timeout: float) -> bool:
    """Whether ``host:port`` answers the SOA question for ``domain`` with the AA bit set."""
    import dns.exception  # dnspython only when a domain is checked
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode

    try:
        reply = dns.query.udp(dns.message.make_query(domain, "SOA"), host, timeout=timeout,
                              port=port)
    except (dns.exception.DNSException, OSError, ValueError):
        return False
    return bool(reply.flags & dns.flags.AA) and reply.rcode() in (dns.rcode.NOERROR,
                                                                 dns.rcode.NXDOMAIN)


def listener(host: str, port: int) -> str | None:
    """The command name of the process holding the UDP socket on ``host:port`` (or on the
    wildcard address), or None when it cannot be seen (another user's process, without
    root). psutil reads the socket table and its owners, as the audit's listeners do."""
    import psutil

    wildcards = ("0.0.0.0", "::")  # noqa: S104 - compared with, not bound to
    for c in psutil.net_connections(kind="udp"):
        if c.laddr and c.laddr.port == port and c.pid and (
                c.laddr.ip == host or c.laddr.ip in wildcards):
            try:
                return str(psutil.Process(c.pid).name())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return None


def running() -> bool:
    """Whether a BIND process runs at all (when the socket's owner cannot be seen)."""
    import psutil

    return any(p.info["name"] in DAEMONS for p in psutil.process_iter(["name"]))


def serves(host: str, port: int, domain: str, timeout: float) -> bool:
    """Whether the local BIND at ``host:port`` serves ``domain``'s zone (see the module)."""
    if not ipaddress.ip_address(host).is_loopback:
        return False
    owner = listener(host, port)
    if owner is None:
        owner = DAEMONS[0] if running() else ""
    return owner in DAEMONS and authoritative(host, port, domain, timeout)
