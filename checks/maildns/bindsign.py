"""BIND's own signing state of the mail domain's zone, when this appliance's named serves it:
``rndc zonestatus <zone>`` (secure, inline signing, key maintenance, next key event, next
resign time) and, for a zone under a ``dnssec-policy``, ``rndc dnssec -status <zone>`` (the
keys, their roles and algorithm, whether a rollover is scheduled, the DS state). The
signatures' expiry is read from what that named serves (the RRSIGs of the SOA and DNSKEY
set, asked with DO): a zone BIND maintains should never come close to it, one signed offline
by dnssec-signzone will, since nothing re-signs it. Every rndc call is an argv list with a
timeout: an rndc that hangs is an UNKNOWN result, not a stuck check."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from agent.model import Result, Status
from agent.system.commands import CommandError, CommandNotFound, CommandRunner, CommandTimeout
from checks.maildns.records import Ctx

MAX_OUT = 64 * 1024
RULE = "bind-dnssec"
POLICY_TEXT = "dnssec-policy default; (and inline-signing yes; for a zone file)"


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text[:MAX_OUT].splitlines()[:200]:
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in out:
            out[key.strip().lower()] = value.strip()
    return out


def _when(text: str) -> float | None:
    """An rndc time ("Mon, 07 Dec 2026 16:05:06 GMT") as epoch seconds."""
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def parse_keys(text: str) -> list[dict[str, Any]]:
    """The keys of ``rndc dnssec -status``: id, algorithm, role, zone signing, rollover, ds."""
    keys: list[dict[str, Any]] = []
    for line in text[:MAX_OUT].splitlines()[:2000]:
        m = re.match(r"key: (\d+) \(([\w-]+)\), (\w+)", line)
        if m:
            keys.append({"id": m.group(1), "alg": m.group(2), "role": m.group(3),
                         "rollover": "", "ds": "", "signing": ""})
            if len(keys) >= 16:
                break
            continue
        if not keys:
            continue
        s = line.strip()
        if s.startswith(("zone signing:", "key signing:")) and not keys[-1]["signing"]:
            keys[-1]["signing"] = s.split(":", 1)[1].strip().split(" ")[0]
        elif "rollover" in s.lower() and not keys[-1]["rollover"]:
            keys[-1]["rollover"] = s[:120]
        elif s.startswith("- ds:"):
            keys[-1]["ds"] = s.split(":", 1)[1].strip()
    return keys


def _rndc(runner: CommandRunner, argv: Sequence[str], timeout: float) -> tuple[str, str]:
    """(output, "") or ("", why it failed)."""
    try:
        return runner.run(list(argv), timeout=timeout).stdout[:MAX_OUT], ""
    except CommandTimeout:
        return "", f"{argv[0]} did not answer within {timeout:g} s"
    except CommandNotFound:
        return "", f"{argv[0]} is not installed"
    except CommandError as e:
        lines = [ln for ln in e.stderr_tail.splitlines() if ln.strip()]
        return "", "; ".join(lines[-2:])[:300] or e.reason


def _sig_expiry(ctx: Ctx, address: tuple[str, int], timeout: float) -> list[tuple[str, float]]:
    import dns.exception
    import dns.message
    import dns.query

    from checks.maildns.dnssec import _sig_expiry as expiry

    replies = []
    for rdtype in ("SOA", "DNSKEY"):
        q = dns.message.make_query(ctx.domain, rdtype, want_dnssec=True, payload=1232)
        try:
            replies.append(dns.query.udp(q, address[0], timeout=timeout, port=address[1]))
        except (dns.exception.DNSException, OSError, ValueError):
            continue
    return expiry(replies)


def bind_rule(ctx: Ctx, runner: CommandRunner, rndc: Sequence[str], *, timeout: float,
              address: tuple[str, int], warn_days: float, now: float) -> Result:
    d = ctx.domain
    out, why = _rndc(runner, [*rndc, "zonestatus", d], timeout)
    if why:
        missing = "not found" in why or "no matching zone" in why
        return ctx.result(RULE, Status.UNKNOWN, f"rndc zonestatus {d}: {why}",
                          [f"command: {' '.join(rndc)} zonestatus {d}"],
                          remedy=f"add a zone statement for {d} to named.conf" if missing else
                          "check named's control channel: the controls statement in "
                          "named.conf and rndc's key (rndc-confgen -a), or set rndc in "
                          "[checks.maildns]")
    zs = _fields(out)
    details = [f"rndc zonestatus {d}: " + ", ".join(
        f"{k} {zs[k]}" for k in ("type", "secure", "inline signing", "key maintenance",
                                 "next key event", "next resign time") if k in zs)]
    if zs.get("secure") != "yes":
        return ctx.result(RULE, Status.WARN, f"this appliance's BIND serves {d} unsigned",
                          details, remedy=f"add {POLICY_TEXT} to zone \"{d}\" in named.conf, "
                          "rndc reconfig, then publish the DS at the parent")
    keys: list[dict[str, Any]] = []
    policy = ""
    if zs.get("key maintenance") == "automatic":
        status_out, why = _rndc(runner, [*rndc, "dnssec", "-status", d], timeout)
        if why:
            details.append(f"rndc dnssec -status {d}: {why}")
        policy = _fields(status_out).get("dnssec-policy", "")
        keys = parse_keys(status_out)
        for k in keys:
            details.append(f"key {k['id']} ({k['alg']}, {k['role']}): signing {k['signing']}"
                           f"; {k['rollover'] or 'no rollover line'}; DS {k['ds'] or '?'}")
    expiry = sorted(_sig_expiry(ctx, address, timeout), key=lambda e: e[1])
    for what, when in expiry[:3]:
        details.append(f"{what} expires {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(when))}"
                       f" (served at {address[0]}:{address[1]})")
    automatic = zs.get("key maintenance") == "automatic"
    left = (expiry[0][1] - now) / 86400 if expiry else None
    resign = _when(zs.get("next resign time", ""))
    if left is not None and left < 0:
        return ctx.result(RULE, Status.CRIT, f"{expiry[0][0]} served by this appliance's BIND "
                          "has expired: validating resolvers refuse the zone", details,
                          remedy=f"re-sign {d} now" + ("; named cannot sign it: check that "
                                                       "its key files are readable by named"
                                                       if automatic else
                                                       f", better: {POLICY_TEXT}"))
    if not automatic:
        summary = (f"{d} is signed offline (key maintenance: none): nothing re-signs it"
                   + (f"; its signatures expire in {left:.1f} days" if left is not None else ""))
        soon = left is not None and left < warn_days
        return ctx.result(RULE, Status.WARN if soon else Status.OK, summary, details,
                          remedy=f"re-sign {d} (dnssec-signzone) before then, or let BIND "
                          f"keep it signed: {POLICY_TEXT}" if soon else "")
    if left is not None and left < warn_days:
        return ctx.result(RULE, Status.WARN, f"BIND maintains {d} but its signatures expire in "
                          f"{left:.1f} days (under {warn_days:g}): it is not re-signing",
                          details, remedy="read named's log for the zone; check that the key "
                          "files in key-directory are readable by named; rndc sign " + d)
    if resign is not None and resign < now - 3600:
        return ctx.result(RULE, Status.WARN, f"BIND's re-signing of {d} is overdue (next "
                          f"resign time {zs['next resign time']})", details,
                          remedy="read named's log for the zone; rndc sign " + d)
    keytext = ", ".join(f"{k['id']} {k['role']} {k['alg']}" for k in keys[:4]) or "?"
    summary = (f"BIND signs {d} itself (dnssec-policy {policy or '?'}; keys {keytext}); next "
               f"key event {zs.get('next key event', '?')}"
               + (f"; signatures valid {left:.0f}+ days" if left is not None else ""))
    return ctx.result(RULE, Status.OK, summary[:300], details)
