"""DNSSEC of the mail domain: the zone validates at the configured resolvers (the AD bit on
its SOA), the parent's DS matches a DNSKEY, and no signature of the SOA or DNSKEY set expires
within ``dnssec_expiry_warn`` days. A bogus answer (SERVFAIL that checking-disabled answers)
is explained from the DS/DNSKEY comparison and the signature times. Without DNSSEC the TLSA
records (DANE) of the domain's MX hosts count for nothing: senders ignore them."""

from __future__ import annotations

import time
from typing import Any

from agent.model import Result, Status
from checks.maildns.records import Ctx

MAX_RRSETS = 32  # of an answer section looked at


def ask(ctx: Ctx, name: str, rdtype: str, cd: bool = False) -> Any:
    """The raw reply (dns.message.Message) to ``name rdtype`` with DO (and CD) set, from the
    first configured resolver that answers; None when none does."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query

    q = dns.message.make_query(name, rdtype, want_dnssec=True, payload=1232)
    q.flags |= dns.flags.AD | (dns.flags.CD if cd else 0)
    timeout = ctx.lookup.resolver.timeout
    for host, port in ctx.lookup.addresses_of_servers:
        try:
            reply = dns.query.udp(q, host, timeout=timeout, port=port)
            if reply.flags & dns.flags.TC:
                reply = dns.query.tcp(q, host, timeout=timeout, port=port)
            return reply
        except (dns.exception.DNSException, OSError, ValueError):
            continue
    return None


def _rrsets(reply: Any, rdtype: str) -> list[Any]:
    import dns.rdatatype

    want = dns.rdatatype.from_text(rdtype)
    return [r for r in reply.answer[:MAX_RRSETS] if r.rdtype == want]


def _sig_expiry(replies: list[Any]) -> list[tuple[str, float]]:
    """(what, expiration time) of every RRSIG in the answers."""
    import dns.rdatatype

    out = []
    for reply in replies:
        for rrset in _rrsets(reply, "RRSIG"):
            for sig in list(rrset)[:16]:
                covered = dns.rdatatype.to_text(sig.type_covered)
                out.append((f"RRSIG {covered} {rrset.name.to_text().rstrip('.')} "
                            f"(key {sig.key_tag})", float(sig.expiration)))
    return out


def _ds_match(domain: str, dnskeys: list[Any], ds: list[Any]) -> list[str]:
    """The DS records (text) that match one of the DNSKEYs."""
    import dns.dnssec
    import dns.exception
    import dns.name

    name = dns.name.from_text(domain)
    digests = {1: "SHA1", 2: "SHA256", 4: "SHA384"}
    matched = []
    for d in ds:
        for key in dnskeys:
            try:
                if dns.dnssec.make_ds(name, key, digests.get(d.digest_type, "SHA256")) == d:
                    matched.append(d.to_text())
            except (ValueError, dns.exception.DNSException):
                pass  # an unsupported or denied digest: that DS cannot be compared
    return matched


def dnssec_rule(ctx: Ctx, warn_days: float, now: float) -> Result:
    import dns.flags
    import dns.rcode

    d = ctx.domain
    soa = ask(ctx, d, "SOA")
    if soa is None:
        return ctx.result("dnssec", Status.UNKNOWN, f"no resolver answered {d} SOA",
                          remedy="check the resolvers")
    keys_reply = ask(ctx, d, "DNSKEY", cd=True)
    ds_reply = ask(ctx, d, "DS", cd=True)
    dnskeys = [k for r in (_rrsets(keys_reply, "DNSKEY") if keys_reply else []) for k in r][:32]
    ds = [x for r in (_rrsets(ds_reply, "DS") if ds_reply else []) for x in r][:32]
    details = [f"DNSKEY {d}: {len(dnskeys)} key(s) "
               f"({', '.join(str(k.flags) + ' alg ' + str(k.algorithm) for k in dnskeys[:6])})",
               f"DS {d} at the parent: " + ("; ".join(x.to_text() for x in ds[:4]) or "none")]
    matched = _ds_match(d, dnskeys, ds) if ds and dnskeys else []  # dns.dnssec: 80 ms
    if ds:
        details.append(f"DS matching a DNSKEY: {len(matched)} of {len(ds)}")
    ksk = [k for k in dnskeys if k.flags & 1] or dnskeys
    suggest = ""
    if ksk:
        import dns.dnssec
        import dns.exception
        import dns.name

        try:
            suggest = dns.dnssec.make_ds(dns.name.from_text(d), ksk[0], "SHA256").to_text()
        except (ValueError, dns.exception.DNSException):
            suggest = ""
    expiry = _sig_expiry([soa, keys_reply] if keys_reply else [soa])
    for what, when in sorted(expiry, key=lambda e: e[1])[:4]:
        details.append(f"{what} expires {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(when))}")
    tlsa = _tlsa_note(ctx)
    if soa.rcode() == dns.rcode.SERVFAIL:
        why = []
        if ds and not matched:
            why.append("no DS at the parent matches a DNSKEY of the zone")
        if expiry and min(w for _, w in expiry) < now:
            why.append("a signature has expired")
        return ctx.result("dnssec", Status.CRIT, f"DNSSEC validation of {d} fails (bogus): "
                          + ("; ".join(why) or "the resolver answers SERVFAIL"),
                          [*details, *tlsa],
                          remedy=(f"replace the DS at the parent (registrar) with {d}. DS "
                                  f"{suggest}" if ds and not matched and suggest else
                                  f"re-sign the zone {d} (dnssec-signzone, or BIND's "
                                  "dnssec-policy) and check that the parent's DS matches "
                                  "its KSK"))
    if soa.rcode() != dns.rcode.NOERROR or not soa.answer:
        return ctx.result("dnssec", Status.UNKNOWN, f"{d} SOA: "
                          f"{dns.rcode.to_text(soa.rcode())}", details,
                          remedy="check that the domain exists and the resolvers")
    if soa.flags & dns.flags.AD:
        soon = [(w, t) for w, t in expiry if t - now < warn_days * 86400]
        if soon:
            what, when = min(soon, key=lambda e: e[1])
            return ctx.result("dnssec", Status.WARN, f"{what} expires in "
                              f"{(when - now) / 86400:.1f} days (under {warn_days:g})", details,
                              remedy=f"re-sign the zone {d} (and make re-signing automatic: "
                              "BIND's dnssec-policy, or a cron job running dnssec-signzone)")
        return ctx.result("dnssec", Status.OK, f"{d} is signed and validates (AD), DS matches, "
                          "signatures valid for "
                          f"{(min(t for _, t in expiry) - now) / 86400:.0f}+ days"
                          if expiry else f"{d} is signed and validates (AD)", details)
    if not dnskeys:
        return ctx.result("dnssec", Status.WARN, f"{d} is not signed (no DNSKEY)",
                          [*details, *tlsa], remedy=f"sign the zone {d} (BIND: dnssec-policy "
                          "default; in the zone statement) and publish its DS at the parent")
    if not ds:
        return ctx.result("dnssec", Status.WARN, f"{d} is signed but the parent has no DS: "
                          "resolvers treat it as unsigned", [*details, *tlsa],
                          remedy=f"publish at the parent (registrar) {d}. DS {suggest}"
                          if suggest else "publish the zone's DS at the parent")
    if not matched:
        return ctx.result("dnssec", Status.CRIT, f"no DS of {d} at the parent matches a "
                          "DNSKEY", [*details, *tlsa],
                          remedy=f"replace the DS at the parent with {d}. DS {suggest}")
    servers = ", ".join(ctx.lookup.servers)
    return ctx.result("dnssec", Status.UNKNOWN, f"{d} is signed and its DS matches, but "
                      f"{servers} set no AD bit: the resolver does not validate", details,
                      remedy="set resolvers in [checks.maildns] to a validating resolver "
                      "(e.g. a local unbound or BIND with dnssec-validation auto)")


def _tlsa_note(ctx: Ctx) -> list[str]:
    hosts = [r.split(" ", 1)[1] for r in ctx.lookup.query(ctx.domain, "MX").records][:10]
    with_tlsa = [h for h in hosts if ctx.lookup.query(f"_25._tcp.{h}", "TLSA").records]
    if not with_tlsa:
        return []
    return [f"TLSA records at {', '.join(with_tlsa)} count for nothing without DNSSEC: "
            "DANE senders ignore them"]
