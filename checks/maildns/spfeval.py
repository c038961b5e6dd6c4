"""SPF evaluation (RFC 7208 §4-5) of one sending IP: check_host() for the mechanisms a mail
domain uses, with the lookup and void-lookup limits enforced as receivers do."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from checks.maildns.lookup import Invalid, Lookup
from checks.maildns.spf import (
    LOOKUP_TERMS,
    MACRO,
    MAX_LOOKUPS,
    MAX_VOID,
    Term,
    parse_spf,
    spf_records,
)


@dataclass
class _State:
    sender: str
    lookups: int = 0
    void: int = 0


class _Abort(Exception):
    def __init__(self, result: str) -> None:
        self.result = result


def check_host(lookup: Lookup, ip: str, domain: str, sender: str = "") -> str:
    """RFC 7208 §4 for the mechanisms steward evaluates: pass, fail, softfail, neutral,
    none, permerror or temperror."""
    addr = ipaddress.ip_address(ip)
    state = _State(sender or f"postmaster@{domain}")
    try:
        return _check(lookup, addr, domain, state, 0)
    except _Abort as a:
        return a.result


_RESULT = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def _count(state: _State, void: bool = False) -> None:
    if void:
        state.void += 1
    else:
        state.lookups += 1
    if state.void > MAX_VOID or state.lookups > MAX_LOOKUPS:
        raise _Abort("permerror")


def _check(lookup: Lookup, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str,
           state: _State, depth: int) -> str:
    if depth > MAX_LOOKUPS:
        raise _Abort("permerror")
    found, error = spf_records(lookup, domain)
    if error:
        return "temperror"
    if not found:
        return "none"
    if len(found) > 1:
        return "permerror"
    record = parse_spf(found[0])
    if isinstance(record, Invalid):
        return "permerror"
    for t in record.mechanisms:
        if t.name in LOOKUP_TERMS:
            _count(state)
        target = _expand(t.domain or domain, addr, domain, state.sender)
        if t.name == "include":
            sub = _check(lookup, addr, target, state, depth + 1)
            if sub in ("temperror",):
                return sub
            if sub in ("permerror", "none"):
                return "permerror"
            matched = sub == "pass"
        else:
            matched = _match(lookup, t, addr, target, state)
        if matched:
            return _RESULT[t.qualifier]
    redirect = record.modifier("redirect")
    if redirect is not None:
        _count(state)
        sub = _check(lookup, addr, _expand(redirect, addr, domain, state.sender), state,
                     depth + 1)
        return "permerror" if sub == "none" else sub
    return "neutral"


def _match(lookup: Lookup, t: Term, addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
           target: str, state: _State) -> bool:
    if t.name == "all":
        return True
    if t.name in ("ip4", "ip6"):
        return t.network is not None and addr.version == t.network.version and \
            addr in t.network
    rtype = "A" if addr.version == 4 else "AAAA"
    prefix = t.cidr4 if addr.version == 4 else t.cidr6
    if t.name in ("a", "exists"):
        ans = lookup.query(target, "A" if t.name == "exists" else rtype)
        _answer(ans.kind, state)
        if t.name == "exists":
            return ans.kind == "ok"
        return _in(addr, ans.records, prefix)
    if t.name == "mx":
        mx = lookup.query(target, "MX")
        _answer(mx.kind, state)
        for rec in mx.records[:MAX_LOOKUPS]:
            host = rec.split(" ", 1)[-1]
            ans = lookup.query(host, rtype)
            if ans.kind == "error":
                raise _Abort("temperror")
            if _in(addr, ans.records, prefix):
                return True
        return False
    if t.name == "ptr":
        names = lookup.ptr(str(addr))
        for name in names.records[:MAX_LOOKUPS]:
            if (name.lower() == target.lower() or name.lower().endswith("." + target.lower())) \
                    and str(addr) in lookup.query(name, rtype).records:
                return True
    return False


def _answer(kind: str, state: _State) -> None:
    if kind == "error":
        raise _Abort("temperror")
    if kind in ("nodata", "nxdomain"):
        _count(state, void=True)


def _in(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, records: tuple[str, ...],
        prefix: int) -> bool:
    for r in records:
        try:
            if addr in ipaddress.ip_network(f"{r}/{prefix}", strict=False):
                return True
        except ValueError:
            continue
    return False


def _expand(spec: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str,
            sender: str) -> str:
    """The common macros (%{d} %{i} %{s} %{l} %{o} %{h}); others expand to the domain."""
    if "%" not in spec:
        return spec
    local, _, sdomain = sender.rpartition("@")
    ip = str(addr) if addr.version == 4 else ".".join(addr.exploded.replace(":", ""))
    values = {"d": domain, "i": ip, "s": sender, "l": local or "postmaster", "o": sdomain,
              "h": domain, "v": "in-addr" if addr.version == 4 else "ip6"}

    def one(m: re.Match[str]) -> str:
        body = m.group(0)
        if body in ("%%", "%_", "%-"):
            return {"%%": "%", "%_": " ", "%-": "%20"}[body]
        letter = body[2].lower()
        value = values.get(letter, domain)
        if body.rstrip("}")[3:].startswith(tuple("0123456789")) or "r" in body[3:]:
            parts = value.split(".")
            if "r" in body[3:]:
                parts.reverse()
            digits = re.match(r"\d+", body[3:])
            if digits and int(digits.group(0)):
                parts = parts[-int(digits.group(0)):]
            value = ".".join(parts)
        return value

    return MACRO.sub(one, spec)
