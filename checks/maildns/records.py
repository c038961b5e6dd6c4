"""The address-level rules: MX hosts that resolve, PTR with forward confirmation of each
sending IP, and DNS blocklist listings of each sending IP."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.model import Check, Result, Status
from checks.maildns.lookup import Lookup, reverse_labels


@dataclass(frozen=True)
class Ctx:
    """What every rule of one domain needs."""

    check: Check
    lookup: Lookup
    domain: str
    note: str = ""  # said in every result's details (the resolver is our own BIND)

    def result(self, rule: str, status: Status, summary: str, details: Sequence[str] = (),
               remedy: str = "", **kw: Any) -> Result:
        lines = [*details]
        if self.note:
            lines.append(self.note)
        return self.check.result(status, summary, target=f"{self.domain}:{rule}",
                                 details="\n".join(lines), remedy=remedy, **kw)


def mx_rule(ctx: Ctx) -> list[Result]:
    d = ctx.domain
    ans = ctx.lookup.query(d, "MX")
    publish = f"{d}. MX 10 mail.{d}.  (and mail.{d}. A <the appliance's public address>)"
    if ans.kind == "error":
        return [ctx.result("mx", Status.UNKNOWN, f"MX lookup failed: {ans.error}",
                           remedy="check the resolvers")]
    if ans.kind == "nxdomain":
        return [ctx.result("mx", Status.CRIT, f"{d} does not exist in DNS",
                           remedy=f"create the zone {d} and publish {publish}")]
    if not ans.records:
        return [ctx.result("mx", Status.CRIT, f"{d} has no MX record",
                           remedy=f"publish {publish}")]
    records = sorted(ans.records, key=lambda r: int(r.split(" ")[0]))
    hosts = [r.split(" ", 1)[1] for r in records]
    if hosts in ([""], ["."]):
        return [ctx.result("mx", Status.WARN, f"{d} publishes a null MX: it receives no mail "
                           "(RFC 7505)", remedy=f"if {d} should receive mail, publish {publish}")]
    details, bad = [], []
    for r, host in zip(records, hosts):
        a, aaaa = ctx.lookup.addresses(host)
        if a.kind == "error" and aaaa.kind == "error":
            details.append(f"MX {r}: lookup failed: {a.error}")
            bad.append((host, Status.UNKNOWN))
        elif not a.records and not aaaa.records:
            details.append(f"MX {r}: no A/AAAA record")
            bad.append((host, Status.CRIT))
        else:
            details.append(f"MX {r}: {', '.join(a.records + aaaa.records)}")
    if bad:
        status = Status.CRIT if any(s is Status.CRIT for _, s in bad) else Status.UNKNOWN
        names = ", ".join(h for h, _ in bad)
        return [ctx.result("mx", status, f"MX host without address: {names}", details,
                           remedy="publish "
                           + "; ".join(f"{h}. A <address of the mail server>" for h, _ in bad)
                           + f", or point the MX of {d} at a host that has one")]
    return [ctx.result("mx", Status.OK, f"{len(hosts)} MX host(s), all resolve", details)]


def ptr_rule(ctx: Ctx, ip: str) -> Result:
    d = ctx.domain
    rule = f"ptr:{ip}"
    ask = (f"ask whoever owns {ip} (ISP, hoster) to set its PTR to mail.{d}, and publish "
           f"mail.{d}. {'A' if ipaddress.ip_address(ip).version == 4 else 'AAAA'} {ip}")
    ans = ctx.lookup.ptr(ip)
    if ans.kind == "error":
        return ctx.result(rule, Status.UNKNOWN, f"PTR lookup of {ip} failed: {ans.error}",
                          remedy="check the resolvers")
    if not ans.records:
        return ctx.result(rule, Status.CRIT, f"{ip} has no PTR record: many receivers "
                          "refuse its mail", remedy=ask)
    details, confirmed = [], []
    rtype = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
    for name in ans.records:
        fwd = ctx.lookup.query(name, rtype)
        ok = any(_same(ip, r) for r in fwd.records)
        details.append(f"PTR {ip} -> {name} -> {', '.join(fwd.records) or fwd.kind}")
        if ok:
            confirmed.append(name)
    if confirmed:
        return ctx.result(rule, Status.OK, f"{ip} -> {confirmed[0]}, forward-confirmed",
                          details)
    names = ", ".join(ans.records)
    return ctx.result(rule, Status.CRIT, f"PTR of {ip} ({names}) does not resolve back to it",
                      details, remedy=f"publish {ans.records[0]}. {rtype} {ip}, or {ask}")


def _same(ip: str, text: str) -> bool:
    try:
        return ipaddress.ip_address(ip) == ipaddress.ip_address(text)
    except ValueError:
        return False


def dnsbl_rule(ctx: Ctx, ip: str, zones: Sequence[str]) -> Result:
    rule = f"dnsbl:{ip}"
    listed, unknown, details = [], [], []
    for zone in zones:
        name = f"{reverse_labels(ip)}.{zone.rstrip('.')}"
        ans = ctx.lookup.query(name, "A")
        if ans.kind == "error":
            unknown.append(zone)
            details.append(f"{zone}: {ans.error}")
        elif ans.records:
            codes = ", ".join(ans.records)
            if all(c.startswith("127.255.255.") for c in ans.records):
                # Spamhaus-style error codes: the list refused this resolver's query
                unknown.append(zone)
                details.append(f"{zone}: refused the query ({codes}); use a resolver of your own")
                continue
            reason = " ".join(ctx.lookup.txt(name).records)
            listed.append(zone)
            details.append(f"{zone}: LISTED ({codes}){': ' + reason if reason else ''}")
        else:
            details.append(f"{zone}: not listed")
    if listed:
        return ctx.result(rule, Status.CRIT, f"{ip} is listed on {', '.join(listed)}", details,
                          remedy=f"find and stop what sent spam from {ip}, then request "
                          f"delisting at {', '.join(listed)} (the reason above names the page)")
    if unknown:
        return ctx.result(rule, Status.UNKNOWN, f"{ip}: could not ask {', '.join(unknown)}",
                          details, remedy="check the resolvers and the blocklist's usage terms")
    return ctx.result(rule, Status.OK, f"{ip} is on none of {len(zones)} blocklist(s)", details)
