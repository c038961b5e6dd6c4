"""DNS queries for the mail-DNS audit: one resolver configuration, answers classified the way
the RFCs count them (answer / no data / no such name / error), cached for one run."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Answer:
    """One query's outcome. ``kind`` is "ok", "nodata", "nxdomain" or "error"."""

    kind: str
    records: tuple[str, ...] = ()
    error: str = ""

    @property
    def void(self) -> bool:
        """RFC 7208 §4.6.4: an empty answer or NXDOMAIN."""
        return self.kind in ("nodata", "nxdomain")


class Invalid:
    """What a record parser returns instead of raising: the record and why it is invalid."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Invalid({self.reason!r})"


def parsed_or_invalid(parse: Callable[[str], T], text: str) -> T | Invalid:
    """``parse(text)``, or Invalid naming what it raised: a record parser that never raises
    (hostile input must not crash the check)."""
    try:
        return parse(text)
    except Exception as e:
        return Invalid(f"unparsable: {e}")


def split_resolver(text: str) -> tuple[str, int]:
    """``ip``, ``ip:port`` or ``[v6]:port`` -> (ip, port); ValueError says what is wrong."""
    host, port = text, 53
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("IPv6 address not closed with ]")
        host, port_text = inner, rest[1:]
        if rest:
            port = _port(port_text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text)
    try:
        ipaddress.ip_address(host)  # a name is refused: resolvers are addresses
    except ValueError:  # its message repeats the whole value
        raise ValueError("not an IP address") from None
    return host, port


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("port is not a number from 1 to 65535")
    return int(text)


def _cname_loop(error: Exception) -> str:
    """"a -> b -> a" when a server failure came with a CNAME chain that loops, else ""."""
    import dns.rdatatype

    for item in (getattr(error, "kwargs", None) or {}).get("errors", ())[:8]:
        reply = item[-1] if isinstance(item, tuple) and item else None
        chain: dict[str, str] = {}
        for rrset in getattr(reply, "answer", ())[:64]:
            if rrset.rdtype == dns.rdatatype.CNAME and len(rrset):
                chain[rrset.name.to_text()] = rrset[0].target.to_text()
        for start, first in chain.items():
            seen, at = [start], first
            while at in chain and at not in seen and len(seen) < 16:
                seen.append(at)
                at = chain[at]
            if at in seen:
                return " -> ".join(n.rstrip(".") for n in [*seen, at])
    return ""


def _txt(rdata: object) -> str:
    # A TXT record may be split into several strings; SPF/DMARC/DKIM read them concatenated.
    strings = getattr(rdata, "strings", ())
    return b"".join(strings).decode("utf-8", errors="replace")


class Lookup:
    """Thread-safe cached queries against the configured (or the system's) resolvers."""

    def __init__(self, resolvers: tuple[str, ...] = (), timeout: float = 3.0) -> None:

        import dns.resolver  # dnspython only when a domain is checked
        if resolvers:
            self.resolver = dns.resolver.Resolver(configure=False)
            servers = [split_resolver(r) for r in resolvers]
            try:
                from dns.nameserver import Do53Nameserver  # dnspython >= 2.4

                self.resolver.nameservers = [Do53Nameserver(h, p) for h, p in servers]
            except ImportError:  # older dnspython: one port per address
                self.resolver.nameservers = [h for h, _ in servers]
                self.resolver.nameserver_ports = dict(servers)
        else:
            self.resolver = dns.resolver.Resolver()  # /etc/resolv.conf
            servers = [(str(s), 53) for s in self.resolver.nameservers]
        self.addresses_of_servers = servers
        self.servers = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in servers]
        self.resolver.timeout = timeout
        self.resolver.lifetime = timeout
        self.resolver.cache = None  # our own cache below keeps NXDOMAIN/NODATA as well
        self._cache: dict[tuple[str, str], Answer] = {}
        self._lock = threading.Lock()

    def own_bind(self, domain: str) -> str:
        """A line for result details when a resolver is this appliance's own BIND serving
        ``domain`` (loopback, named listening, authoritative for it); else ""."""
        from checks.maildns.localbind import serves

        own = [text for (h, p), text in zip(self.addresses_of_servers, self.servers)
               if serves(h, p, domain, self.resolver.timeout)]
        if not own:
            return ""
        return (f"resolver {', '.join(own)} is this appliance's own BIND, serving {domain}: "
                "it answers from its own zones, which may differ from what other mail "
                "servers see")

    def query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._ask(name, rdtype)
        with self._lock:
            self._cache[key] = answer
        return answer

    def _ask(self, name: str, rdtype: str) -> Answer:

        import dns.exception  # dnspython only when a domain is checked
        import dns.name
        import dns.resolver
        try:
            qname = dns.name.from_text(name)
            rrset = self.resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                          search=False)
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except dns.resolver.NoNameservers as e:
            loop = _cname_loop(e)
            if loop:
                return Answer("error", error=f"CNAME loop at {name}: {loop}")
            # dnspython's message lists every server's reply: too long for a summary line
            return Answer("error", error=f"no resolver answered {name} {rdtype} "
                          "(refused, server failure or unreachable)")
        except dns.exception.Timeout:
            return Answer("error", error=f"timed out asking for {name} {rdtype}")
        except dns.exception.DNSException as e:
            return Answer("error", error=f"{name} {rdtype}: {e}")
        if rrset.rrset is None or not len(rrset.rrset):
            return Answer("nodata")
        if rdtype == "TXT":
            records = tuple(_txt(r) for r in rrset.rrset)
        elif rdtype == "MX":
            records = tuple(f"{r.preference} {r.exchange.to_text().rstrip('.')}"
                            for r in rrset.rrset)
        elif rdtype == "PTR":
            records = tuple(r.target.to_text().rstrip(".") for r in rrset.rrset)
        else:
            records = tuple(r.to_text() for r in rrset.rrset)
        return Answer("ok", records)

    def txt(self, name: str) -> Answer:
        return self.query(name, "TXT")

    def addresses(self, name: str) -> tuple[Answer, Answer]:
        return self.query(name, "A"), self.query(name, "AAAA")

    def ptr(self, ip: str) -> Answer:

        import dns.reversename  # dnspython only when a domain is checked
        return self.query(dns.reversename.from_address(ip).to_text(), "PTR")


def reverse_labels(ip: str) -> str:
    """The DNSBL form of an address: 192.0.2.1 -> "1.2.0.192", IPv6 as reversed nibbles."""


    import dns.reversename  # dnspython only when a domain is checked
    text = dns.reversename.from_address(ip).to_text().rstrip(".")
    return text.rsplit(".", 2)[0]
