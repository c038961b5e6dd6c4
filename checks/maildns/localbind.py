"""Whether a loopback resolver is this appliance's own BIND serving the domain's zone.

Only then do the record findings depend on ``service:named``: a loopback resolver may as well
be unbound, dnsmasq or systemd-resolved forwarding to the world. Two things must hold: the
resolver answers authoritatively (the AA bit) for the domain, and the process listening on its
UDP port is named (BIND's daemon on EL9 and Debian alike, the bind9 package's too).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

DAEMONS = ("named",)  # /proc/PID/comm of BIND (named, named-chroot and bind9 units all run it)


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


def _hex_address(host: str, port: int) -> tuple[str, str]:
    """/proc/net/udp's "local_address" form of host:port, and which table holds it."""
    ip = ipaddress.ip_address(host)
    packed = ip.packed
    # The kernel prints the address as 32-bit words in host byte order.
    words = [packed[i:i + 4] for i in range(0, len(packed), 4)]
    text = "".join(w[::-1].hex().upper() if socket.htonl(1) != 1 else w.hex().upper()
                   for w in words)
    return f"{text}:{port:04X}", "udp6" if ip.version == 6 else "udp"


def _socket_inodes(host: str, port: int, proc: Path) -> set[str]:
    want, table = _hex_address(host, port)
    address = want.split(":")[0]
    wildcard = f"{'0' * len(address)}:{port:04X}"
    inodes = set()
    for name in {table, "udp6"}:  # a v6 wildcard socket also takes v4
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1] in (want, wildcard):
                inodes.add(fields[9])
    return inodes


def listener(host: str, port: int, proc: Path = Path("/proc")) -> str | None:
    """The command name of the process holding the UDP socket on ``host:port``, or None when
    it cannot be seen (another user's process, without root)."""
    inodes = {f"socket:[{i}]" for i in _socket_inodes(host, port, proc)}
    if not inodes:
        return None
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(proc / pid / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(proc / pid / "fd" / fd) in inodes:
                    return (proc / pid / "comm").read_text().strip()
            except OSError:
                continue
    return None


def running(proc: Path = Path("/proc")) -> bool:
    """Whether a BIND process runs at all (when the socket's owner cannot be seen)."""
    for pid in os.listdir(proc):
        try:
            if pid.isdigit() and (proc / pid / "comm").read_text().strip() in DAEMONS:
                return True
        except OSError:
            continue
    return False


def serves(host: str, port: int, domain: str, timeout: float) -> bool:
    """Whether the local BIND at ``host:port`` serves ``domain``'s zone (see the module)."""
    if not ipaddress.ip_address(host).is_loopback:
        return False
    owner = listener(host, port)
    if owner is None:
        owner = DAEMONS[0] if running() else ""
    return owner in DAEMONS and authoritative(host, port, domain, timeout)
