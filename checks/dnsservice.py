"""The local BIND answers authoritatively for its zones, and keeps its version to itself.

Zones come from the configuration or from named's effective configuration
(``named-checkconf -p``); each is asked for its SOA with recursion off, so only an
authoritative answer counts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import posixpath
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dns.message

from agent.config.schema import TEXT, CheckOptions, Parser, choice, listing, number, option, string
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.system.commands import CommandError
from checks.ports import split_target
from checks.services import watched_units

DNS_PORT = 53
CHECKCONF_TIMEOUT = 10.0
CHROOT = "/var/named/chroot"  # where EL9's named-chroot.service runs named (-t)
NAMED_UNITS = ("named-chroot", "named")  # the chroot unit wins when both are watched

# Zones every named.conf carries (EL9's named.rfc1912.zones, Debian's named.conf.default-zones):
# nothing the appliance serves to anybody.
BUILTIN_ZONES = frozenset({
    "localhost", "localhost.localdomain", "0.in-addr.arpa", "127.in-addr.arpa",
    "1.0.0.127.in-addr.arpa", "255.in-addr.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
})
# "9.18.28-1~deb12u2-Debian", "9.16.23-RH", "9.11.4-P2-RedHat-9.11.4-26.P2.el7": what BIND
# says by default. Anything else was put there by an administrator on purpose.
BIND_VERSION = re.compile(r"^\s*(?:BIND\s+)?\d+\.\d+(?:\.\d+)?(?:[-.~+ ].*)?$", re.I)


def parse_server(text: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 address -> (ip, port)."""
    try:
        return str(ipaddress.ip_address(text)), DNS_PORT
    except ValueError:
        pass
    host, port = split_target(text)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError("not an IP address (a name would need a resolver to find it)") \
            from None




def _zone(v: Any) -> str:
    import dns.exception  # only when a zone is configured
    import dns.name

    text = TEXT.parse(v).strip().rstrip(".").lower()
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException as e:
        raise ValueError(f"not a domain name: {e}") from None
    return text or "."


@dataclass(frozen=True)
class DnsServiceOptions(CheckOptions):
    interval: float = option(60.0, number(1, 86400), "seconds between runs under steward run "
                             "(named is watched by its unit too)")
    server: str = option("127.0.0.1", string('"ip", "ip:port" or "[ipv6]:port"', parse_server),
                         "the name server to ask (port 53 unless given)")
    zones: tuple[str, ...] | None = option(
        None, listing(Parser(_zone, "a zone name")),
        "the primary zones of named's effective configuration (named-checkconf -p), "
        "without the built-in localhost and reverse-loopback zones")
    named_conf: str = option("/etc/named.conf", TEXT,
                             "named's configuration, read with named-checkconf -p to find zones")
    query_timeout: float = option(3.0, number(0.05, 60), "seconds to wait for each answer")
    version: str = option("warn", choice("warn", "crit", "skip"),
                          "what named answering version.bind with its real version is")
    timeout: float = option(10.0, number(0.1, 3600), "seconds before the check is UNKNOWN")


@dataclass(frozen=True)
class ZoneDecl:
    """A zone named's effective configuration declares."""

    name: str
    type: str
    file: str  # as written (relative to ``directory`` when not absolute)


_ZONE = re.compile(r'^(\s*)zone\s+"((?:[^"\\]|\\.)*)"\s*(\S+)?\s*\{\s*$')
_TYPE = re.compile(r"^\s*type\s+([a-z-]+)\s*;")
_FILE = re.compile(r'^\s*file\s+"((?:[^"\\]|\\.)*)"\s*;')
_DIRECTORY = re.compile(r'^\s*directory\s+"((?:[^"\\]|\\.)*)"\s*;')


def parse_checkconf(text: str) -> tuple[list[ZoneDecl], str]:
    """The zones in ``named-checkconf -p`` output (its canonical layout: one statement per
    line, blocks closed by ``};`` at the opening indentation) and the ``directory`` option."""
    zones: list[ZoneDecl] = []
    directory = ""
    current: dict[str, str] | None = None
    indent = ""
    for line in text.splitlines():
        if current is None:
            m = _ZONE.match(line)
            if m:
                klass = (m.group(3) or "IN").upper()
                current = {"name": m.group(2), "class": klass, "type": "", "file": ""}
                indent = m.group(1)
                continue
            d = _DIRECTORY.match(line)
            if d and not directory:
                directory = d.group(1)
            continue
        if line == indent + "};":
            if current["class"] == "IN":
                name = current["name"].rstrip(".").lower() or "."
                zones.append(ZoneDecl(name, current["type"], current["file"]))
            current = None
            continue
        # Only the zone's own statements, not those of nested blocks (masters { ... }).
        if line.startswith(indent + "\t") and not line.startswith(indent + "\t\t"):
            t = _TYPE.match(line)
            if t:
                current["type"] = t.group(1)
            f = _FILE.match(line)
            if f:
                current["file"] = f.group(1)
    return zones, directory


def served_zones(zones: Iterable[ZoneDecl]) -> tuple[str, ...]:
    """The primary zones worth checking: not the built-in ones every named carries."""
    return tuple(dict.fromkeys(z.name for z in zones if z.type in ("master", "primary")
                               and z.name not in BUILTIN_ZONES))


def named_unit(env: Env) -> str:
    """The watched unit that runs named here ("" when none is watched)."""
    units = watched_units(env)
    return next((u for u in NAMED_UNITS if u in units), "")


def checkconf(env: Env, conf: str, timeout: float = CHECKCONF_TIMEOUT
              ) -> tuple[list[ZoneDecl], str]:
    """named's effective zones and directory; raises CommandError."""
    chroot = ["-t", CHROOT] if named_unit(env) == "named-chroot" else []
    out = env.commands.run(["named-checkconf", "-p", *chroot, conf], timeout=timeout).stdout
    return parse_checkconf(out)


def _is_local(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


class DnsServiceCheck(Check):
    """One instance per zone (``dns:<zone>``) and one for version disclosure
    (``dns:version``); without zones because discovery failed, ``dns`` says why."""

    name = "dns"
    Options = DnsServiceOptions
    options: DnsServiceOptions

    @classmethod
    def resolve(cls, options: DnsServiceOptions, env: Env) -> DnsServiceOptions:
        if options.zones is not None:
            return options
        try:
            zones, _ = checkconf(env, options.named_conf)
        except CommandError:
            return options  # run() of the "dns" instance says why
        return dataclasses.replace(options, zones=served_zones(zones))

    @classmethod
    def instances(cls, options: DnsServiceOptions, env: Env) -> Iterable[Check]:
        host, _ = parse_server(options.server)
        if options.zones is None and _is_local(host) and not named_unit(env):
            return []  # no named here and nothing configured: nothing to look after
        found: list[Check] = [cls(options, z) for z in options.zones or ()]
        if options.zones is None:
            found.append(cls(options, ""))
        if options.version != "skip":
            found.append(cls(options, "version"))
        return found

    def run(self, env: Env) -> Iterable[Result]:
        host, port = parse_server(self.options.server)
        unit = named_unit(env) if _is_local(host) else ""
        if self.target == "":
            out = [self.discovery(env)]
        elif self.target == "version":
            out = [self.version(host, port)]
        else:
            out = [self.zone(env, host, port, unit)]
        if unit:
            out = [dataclasses.replace(r, unit=unit, depends_on=(f"service:{unit}",))
                   for r in out]
        return out

    # -- the instances -------------------------------------------------------------------

    def discovery(self, env: Env) -> Result:
        """Zones were not configured and could not be discovered: say why."""
        conf = self.options.named_conf
        try:
            zones, _ = checkconf(env, conf)
        except CommandError as e:
            return self.result(Status.UNKNOWN, f"no zones to check: {e.reason} "
                               f"(named-checkconf -p {conf})", details=str(e),
                               remedy=f"named-checkconf {conf} shows what is wrong; or list "
                               "the zones in [checks.dns] zones", restartable=False)
        found = served_zones(zones)
        return self.result(Status.OK, f"{len(found)} zone(s) found now; they are checked "
                           "once steward starts again", details=", ".join(found))

    def query(self, host: str, port: int, qname: str, rdtype: str, rdclass: str = "IN"
              ) -> tuple[dns.message.Message, float]:
        """Ask without recursion; (answer, seconds). Raises DNSException or OSError."""
        import dns.flags  # dnspython loads when a query is made, not with steward
        import dns.message
        import dns.query

        q = dns.message.make_query(qname, rdtype, rdclass)
        q.flags &= ~dns.flags.RD
        t0 = time.monotonic()
        reply = dns.query.udp(q, host, port=port, timeout=self.options.query_timeout)
        if reply.flags & dns.flags.TC:  # an answer too big for UDP: ask again over TCP
            reply = dns.query.tcp(q, host, port=port, timeout=self.options.query_timeout)
        return reply, time.monotonic() - t0

    def zone(self, env: Env, host: str, port: int, unit: str) -> Result:
        import dns.exception  # dnspython loads when a query is made, not with steward
        import dns.flags
        import dns.name
        import dns.rcode
        import dns.rdatatype

        zone, o = self.target, self.options
        where = f"{host}#{port}" if port != DNS_PORT else host
        journal = f"journalctl -u {unit} -b -n 50" if unit else "named's log"
        try:
            reply, took = self.query(host, port, zone, "SOA")
        except dns.exception.Timeout:
            return self.result(Status.CRIT, f"no answer from {where} within "
                               f"{o.query_timeout:g} s",
                               remedy=f"is named running and listening on {where}? "
                               f"ss -lunp 'sport = :{port}'; {journal}")
        except (dns.exception.DNSException, OSError) as e:
            return self.result(Status.CRIT, f"query to {where} failed: {e}",
                               remedy=f"ss -lunp 'sport = :{port}'; {journal}")
        rcode = dns.rcode.to_text(reply.rcode())
        soa = [rr for rrset in reply.answer if rrset.rdtype == dns.rdatatype.SOA
               and rrset.name == dns.name.from_text(zone) for rr in rrset]
        aa = bool(reply.flags & dns.flags.AA)
        if rcode == "NOERROR" and aa and soa:
            serial = int(soa[0].serial)
            return self.result(Status.OK, f"authoritative, serial {serial} "
                               f"({took * 1000:.1f} ms)",
                               metrics=(Metric("serial", serial, min=0),
                                        Metric("response_time", round(took, 6), "s", min=0)))
        fix = self.zone_fix(env, journal)
        if rcode == "SERVFAIL":
            return self.result(Status.CRIT, f"{where} answers SERVFAIL: the zone is not "
                               "loaded", remedy=fix, restartable=False)
        if rcode == "REFUSED":
            return self.result(Status.CRIT, f"{where} REFUSED the query: it does not serve "
                               "the zone (or allow-query forbids it)", remedy=fix,
                               restartable=False)
        if rcode != "NOERROR":
            return self.result(Status.CRIT, f"{where} answers {rcode} for the zone's SOA",
                               remedy=fix, restartable=False)
        what = "without a SOA record" if not soa else "without the AA flag"
        return self.result(Status.CRIT, f"{where} is not authoritative: it answers {what}",
                           remedy=fix, restartable=False)

    def zone_fix(self, env: Env, journal: str) -> str:
        """What to do about a zone named does not serve: check its file, reload."""
        zone, path = self.target, "FILE"
        try:
            zones, directory = checkconf(env, self.options.named_conf,
                                         timeout=min(CHECKCONF_TIMEOUT, self.timeout / 2))
        except CommandError:
            zones, directory = [], ""
        for z in zones:
            if z.name == zone and z.file:
                path = posixpath.join(directory or "/var/named", z.file)
                break
        return (f"named-checkzone {zone} {path}; is the zone in {self.options.named_conf} "
                f"(named-checkconf -z)? then rndc reload {zone}; see {journal}")

    def version(self, host: str, port: int) -> Result:
        import dns.exception  # dnspython loads when a query is made, not with steward
        import dns.rcode
        import dns.rdatatype

        where = f"{host}#{port}" if port != DNS_PORT else host
        try:
            reply, _ = self.query(host, port, "version.bind", "TXT", "CH")
        except dns.exception.Timeout:
            return self.result(Status.UNKNOWN, f"no answer from {where} within "
                               f"{self.options.query_timeout:g} s to version.bind",
                               restartable=False)
        except (dns.exception.DNSException, OSError) as e:
            return self.result(Status.UNKNOWN, f"version.bind query to {where} failed: {e}",
                               restartable=False)
        texts = [b"".join(rr.strings).decode("utf-8", "replace") for rrset in reply.answer
                 if rrset.rdtype == dns.rdatatype.TXT for rr in rrset]
        rcode = dns.rcode.to_text(reply.rcode())
        if not texts:
            return self.result(Status.OK, f"version not disclosed ({rcode}, no answer)",
                               restartable=False)
        shown = texts[0].strip()[:80]
        if not BIND_VERSION.match(texts[0]):
            return self.result(Status.OK, f"version hidden behind {shown!r}",
                               restartable=False)
        bad = Status.CRIT if self.options.version == "crit" else Status.WARN
        return self.result(bad, f"named discloses its version ({shown})",
                           details=f"anyone may ask: dig @{host} -p {port} version.bind chaos txt",
                           remedy='add version "none"; (or version none; to refuse the '
                           f'question) to the options {{ }} of {self.options.named_conf}, '
                           'then rndc reconfig',
                           restartable=False)
