"""The mail domain's public DNS as receivers see it: MX, SPF, DMARC, DKIM, and the PTR and
blocklist standing of the addresses the appliance sends from. One instance per domain; the
queries of one domain run in parallel threads within the check's timeout."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from agent.config.schema import (
    ARGV,
    TEXT,
    CheckOptions,
    Parser,
    choice,
    listing,
    number,
    option,
    string,
    table,
)
from agent.env import Env
from agent.model import Check, Result, Status
from checks.maildns.lookup import Lookup, split_resolver

if TYPE_CHECKING:  # the rules load with the first domain to check, not with steward
    from checks.maildns.records import Ctx

DEFAULT_KEYTABLE = "/etc/opendkim/KeyTable"


def _domain(v: Any) -> str:
    if not isinstance(v, str) or not v.strip(".") or any(c.isspace() for c in v) or \
            ".." in v or len(v) > 253:
        raise ValueError("not a domain name")
    return v.lower().rstrip(".")




RESOLVER = string('"ip" or "ip:port" or "[ipv6]:port"', split_resolver)


def _ip(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:  # its message repeats the whole value
        raise ValueError("not an IP address") from None


def _selector(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", v):
        raise ValueError("not a DKIM selector (letters, digits, - and _, dotted)")
    return v


def _key_name(v: Any) -> str:
    if not isinstance(v, str) or "._domainkey." not in v or any(c.isspace() for c in v):
        raise ValueError("not selector._domainkey.domain")
    return v.lower().rstrip(".")


DOMAIN = Parser(_domain, "a domain name")
SELECTORS = listing(Parser(_selector, "a DKIM selector"))


def _selectors(v: Any) -> Any:
    if isinstance(v, Mapping):
        return table(DOMAIN, SELECTORS).parse(v)
    return SELECTORS.parse(v)


@dataclass(frozen=True)
class MailDnsOptions(CheckOptions):
    domains: tuple[str, ...] = option((), listing(DOMAIN), "mail domains to audit; none: "
                                      "the check yields nothing")
    resolvers: tuple[str, ...] = option((), listing(RESOLVER),
                                        "resolvers to ask; none: those of /etc/resolv.conf")
    sending_ips: tuple[str, ...] = option((), listing(Parser(_ip, "an IP address")),
                                          "addresses the appliance sends mail from (SPF, PTR "
                                          "and blocklists are checked for each)")
    dkim_selectors: Any = option((), Parser(_selectors, "a list of selectors, or a table: "
                                            "domain = [selectors]"),
                                 "DKIM selectors to check (those of the KeyTable are added)")
    dkim_keys: Mapping[str, str] | None = option(
        None, table(Parser(_key_name, '"selector._domainkey.domain"'), TEXT),
        "private key file of each selector, to compare with the published key")
    opendkim_keytable: str | None = option(
        None, TEXT, f"OpenDKIM KeyTable giving selectors and keys; unset: {DEFAULT_KEYTABLE} "
        "if it exists")
    dnsbl: tuple[str, ...] = option((), listing(DOMAIN), "DNS blocklist zones to look the "
                                    "sending IPs up in")
    mta_sts_ca: str | None = option(None, TEXT, "CA bundle to verify the MTA-STS policy host "
                                    "with; unset: the system's trust store")
    mta_sts_port: int = option(443, number(1, 65535, integer=True),
                               "port of the MTA-STS policy host (443 per RFC 8461; another "
                               "only to test against a server of your own)")
    dane_port: int = option(25, number(1, 65535, integer=True),
                            "SMTP port of the MX hosts for the DANE check (25 per RFC 7672; "
                            "another only to test against a server of your own)")
    dane_next_certs: Mapping[str, str] | None = option(
        None, table(DOMAIN, TEXT), "MX host = staged renewed certificate (PEM): its key is "
        "matched against the TLSA records too")
    dnssec_expiry_warn: float = option(7.0, number(0, 365), "days: a DNSSEC signature of the "
                                       "zone expiring sooner is a WARN")
    bind_signing: str = option("auto", choice("auto", "yes", "no"), "read BIND's signing "
                               "state of the zone with rndc (bind-dnssec): auto when a "
                               "resolver is this appliance's own BIND serving the domain, yes "
                               "always (a local named behind another resolver), no never")
    rndc: tuple[str, ...] = option(("/usr/sbin/rndc",), ARGV, "rndc as an argv list; add "
                                   "-c/-k/-s/-p to reach another control channel")
    rndc_timeout: float = option(10.0, number(0.1, 600), "seconds for one rndc call")
    bind_address: str | None = option(None, RESOLVER, "where the local named answers DNS, to "
                                      "read the signatures it serves; unset: the loopback "
                                      "resolver, else 127.0.0.1")
    tls_timeout: float = option(10.0, number(0.1, 600), "seconds for fetching the "
                                "MTA-STS policy, and for each STARTTLS handshake (DANE)")
    query_timeout: float = option(3.0, number(0.1, 60), "seconds for one DNS query")
    timeout: float = option(30.0, number(0.1, 3600), "seconds before the check is UNKNOWN")
    interval: float = option(3600.0, number(1, 86400), "seconds between runs under steward "
                             "run")


def _one(rule: Callable[..., Result], *args: Any) -> list[Result]:
    return [rule(*args)]


class MailDnsCheck(Check):
    name = "maildns"
    Options = MailDnsOptions
    options: MailDnsOptions

    @classmethod
    def instances(cls, options: MailDnsOptions, env: Env) -> Iterable[Check]:
        return [cls(options, d) for d in options.domains]

    def run(self, env: Env) -> Iterable[Result]:
        o = self.options
        import dns.exception  # loaded with the first domain to check, not with steward

        from checks.maildns.dane import dane_rules
        from checks.maildns.dnssec import dnssec_rule
        from checks.maildns.mtasts import mta_sts_rule, tlsrpt_rule
        from checks.maildns.records import Ctx, dnsbl_rule, mx_rule, ptr_rule
        from checks.maildns.rules import dkim_rule, dmarc_rule, spf_rule

        try:
            lookup = Lookup(o.resolvers, o.query_timeout)
        except (dns.exception.DNSException, OSError) as e:
            return [self.result(Status.UNKNOWN, f"no resolver: {e}",
                                remedy="set resolvers in [checks.maildns] or fix "
                                "/etc/resolv.conf")]
        ctx = Ctx(self, lookup, self.target, lookup.own_bind(self.target))
        jobs: dict[str, Callable[[], list[Result]]] = {
            "mx": lambda: mx_rule(ctx),
            "spf": lambda: spf_rule(ctx, o.sending_ips),
            "dmarc": lambda: [dmarc_rule(ctx)],
            "mta-sts": partial(_one, mta_sts_rule, ctx, o.mta_sts_port, o.tls_timeout,
                               o.mta_sts_ca),
            "dane": partial(dane_rules, ctx, o.dane_port, o.tls_timeout,
                            o.dane_next_certs or MappingProxyType({})),
            "tls-rpt": partial(_one, tlsrpt_rule, ctx),
            "dnssec": partial(_one, dnssec_rule, ctx, o.dnssec_expiry_warn, env.clock.now()),
        }
        if o.bind_signing == "yes" or (o.bind_signing == "auto" and ctx.note):
            from checks.maildns.bindsign import bind_rule

            jobs["bind-dnssec"] = (
                lambda: [bind_rule(ctx, env.commands, o.rndc, timeout=o.rndc_timeout,
                                   address=self._bind_address(lookup),
                                   warn_days=o.dnssec_expiry_warn, now=env.clock.now())])
        keys, trouble = self.dkim_keys(env)
        for sel in self.selectors(keys):
            jobs[f"dkim:{sel}"] = partial(_one, dkim_rule, ctx, sel, keys.get(sel))
        for ip in o.sending_ips:
            jobs[f"ptr:{ip}"] = partial(_one, ptr_rule, ctx, ip)
            if o.dnsbl:
                jobs[f"dnsbl:{ip}"] = partial(_one, dnsbl_rule, ctx, ip, o.dnsbl)
        results: list[Result] = []
        if trouble or not any(j.startswith("dkim:") for j in jobs):
            results.append(ctx.result(
                "dkim", Status.UNKNOWN if trouble else Status.WARN,
                trouble or f"no DKIM selector known for {self.target}: DKIM not checked",
                remedy="set dkim_selectors (and dkim_keys) in [checks.maildns], or "
                "opendkim_keytable"))
        results += self._parallel(ctx, jobs)
        if ctx.note:
            # Answers come from our own named: while it (or its copy of this zone) fails, the
            # record findings are its consequence, not news of their own.
            local = ("service:named*", f"dns:{self.target}")
            results = [dataclasses.replace(r, depends_on=r.depends_on + local) for r in results]
        return results

    def _parallel(self, ctx: Ctx, jobs: dict[str, Callable[[], list[Result]]]) -> list[Result]:
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures import TimeoutError as FutureTimeout

        # Leave the runner a margin so slow rules become UNKNOWN here, by name, rather than
        # the whole check timing out with nothing to show.
        deadline = time.monotonic() + max(self.options.timeout * 0.9, self.options.timeout - 2)
        pool = ThreadPoolExecutor(max_workers=min(16, len(jobs)),
                                  thread_name_prefix=f"maildns-{self.target}")
        futures = {rule: pool.submit(job) for rule, job in jobs.items()}
        out: list[Result] = []
        try:
            for rule, fut in futures.items():
                try:
                    out += fut.result(timeout=max(0.0, deadline - time.monotonic()))
                except FutureTimeout:
                    out.append(ctx.result(rule, Status.UNKNOWN, "no answer within the check's "
                                          "timeout", remedy="check the resolvers, or raise "
                                          "timeout in [checks.maildns]"))
                except Exception as e:  # one rule's bug must not hide the others' results
                    out.append(ctx.result(rule, Status.UNKNOWN, f"rule failed: {e!r}"[:200]))
        finally:
            pool.shutdown(wait=False)
        return out

    def _bind_address(self, lookup: Lookup) -> tuple[str, int]:
        if self.options.bind_address:
            return split_resolver(self.options.bind_address)
        loopback = [(h, p) for h, p in lookup.addresses_of_servers
                    if ipaddress.ip_address(h).is_loopback]
        return loopback[0] if loopback else ("127.0.0.1", 53)

    def selectors(self, keys: Mapping[str, str]) -> list[str]:
        sel = self.options.dkim_selectors
        configured = sel.get(self.target, ()) if isinstance(sel, Mapping) else sel
        return list(dict.fromkeys([*configured, *keys]))

    def dkim_keys(self, env: Env) -> tuple[dict[str, str], str]:
        """selector -> private key path for this domain, and a problem reading the table."""
        from checks.maildns.dkim import read_keytable

        o = self.options
        root = env.sysroot
        keys: dict[str, str] = {}
        trouble = ""
        path = o.opendkim_keytable or DEFAULT_KEYTABLE
        table_file = root / path.lstrip("/")
        if o.opendkim_keytable or table_file.exists():
            try:
                for domain, selector, keyfile in read_keytable(table_file).values():
                    if domain == self.target:
                        keys[selector] = str(root / keyfile.lstrip("/")) \
                            if keyfile.startswith("/") else keyfile
            except OSError as e:
                trouble = f"cannot read the KeyTable {table_file}: {e.strerror or e}"
        suffix = f"._domainkey.{self.target}"
        for name, keyfile in (o.dkim_keys or MappingProxyType({})).items():
            if name.lower().endswith(suffix):
                keys[name[:-len(suffix)]] = str(Path(keyfile))
        return keys, trouble
