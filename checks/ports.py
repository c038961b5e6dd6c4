"""TCP ports that must accept connections; by default those of the appliance's services."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.config.schema import RANGE, TEXT, CheckOptions, listing, number, option, string, table
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.ranges import Range, judge
from checks.services import canonical, watched_units

# Where each appliance service listens by default (checked on localhost).
SERVICE_PORTS = {"sshd": (22,), "postfix": (25,), "named": (53,), "named-chroot": (53,),
                 "httpd": (80,), "dovecot": (993,)}


def split_target(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not host:port with a port from 1 to 65535")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("IPv6 address not closed with ]")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("IPv6 addresses need brackets: [::1]:25")
    return host, int(port)




@dataclass(frozen=True)
class PortOptions(CheckOptions):
    targets: tuple[str, ...] | None = option(
        None, listing(string('"host:port" or "[ipv6]:port"', split_target)),
        "the default ports of the watched services are checked")
    units: Mapping[str, str] | None = option(
        None, table(string('"host:port"', split_target), TEXT),
        "unset with targets unset: each default port is linked to its service. A linked "
        "port failing while its unit runs gets the unit restarted")
    connect_timeout: float = option(3.0, number(0.01, 600), "seconds to wait for the connection")
    warn: Range | None = option(None, RANGE, "connect time, seconds")
    crit: Range | None = option(None, RANGE, "connect time, seconds")
    timeout: float = option(5.0, number(0.1, 3600), "seconds before the check is UNKNOWN")


class PortCheck(Check):
    name = "port"
    Options = PortOptions
    options: PortOptions

    @classmethod
    def resolve(cls, options: PortOptions, env: Env) -> PortOptions:
        if options.targets is not None:
            return options
        units = watched_units(env)
        links: dict[str, str] = {}
        for unit in units:
            for port in SERVICE_PORTS.get(canonical(unit), ()):
                links.setdefault(f"localhost:{port}", unit)
        return dataclasses.replace(options, targets=tuple(sorted(links, key=split_target)),
                                   units=MappingProxyType(links))

    @classmethod
    def instances(cls, options: PortOptions, env: Env) -> Iterable[Check]:
        return [cls(options, t) for t in options.targets or ()]

    def run(self, env: Env) -> Iterable[Result]:
        return [dataclasses.replace(r, unit=unit, depends_on=(f"service:{unit}",))
                if (unit := (self.options.units or {}).get(self.target)) else r
                for r in self.probe()]

    def probe(self) -> list[Result]:
        host, port = split_target(self.target)
        o = self.options
        t0 = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=o.connect_timeout):
                took = time.monotonic() - t0
        except socket.gaierror as e:
            return [self.result(Status.CRIT, f"cannot resolve {host}: {e.strerror}",
                                remedy=f"check the name, /etc/hosts and the resolver for {host}")]
        except socket.timeout:
            return [self.result(Status.CRIT, f"no answer within {o.connect_timeout:g} s",
                                remedy=f"a firewall drops it, or the listener is hung: "
                                f"ss -ltnp 'sport = :{port}'")]
        except OSError as e:
            return [self.result(Status.CRIT, f"cannot connect: {e.strerror or e}",
                                remedy=f"is the service listening? ss -ltnp 'sport = :{port}'")]
        status = Status(judge(took, o.warn, o.crit))
        return [self.result(status, f"accepting connections ({took * 1000:.1f} ms)",
                            metrics=(Metric("connect_time", round(took, 6), "s",
                                            o.warn.text if o.warn else "",
                                            o.crit.text if o.crit else "", 0),))]
