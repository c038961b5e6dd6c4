"""SPF (RFC 7208): a parser that never raises, the worst-case DNS-lookup count through
include/redirect (with void lookups and loops), and an evaluator for one sending IP."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from checks.maildns.lookup import Invalid, Lookup, parsed_or_invalid

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4
MAX_VOID = 2
LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists")
QUALIFIERS = "+-~?"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
MACRO = re.compile(r"%(?:\{[slodiphcrtv][0-9]*r?[-.+,/_=]*\}|[%_-])")
_DOMAIN_CHARS = re.compile(r"[!-~]+\Z")  # visible ASCII, as the RFC's macro-string


@dataclass(frozen=True)
class Term:
    qualifier: str  # "+", "-", "~", "?"; "" for modifiers
    name: str       # mechanism or modifier name, lower case
    domain: str = ""   # domain-spec ("" = the current domain)
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True)
class SpfRecord:
    terms: tuple[Term, ...]

    @property
    def mechanisms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.qualifier)

    def modifier(self, name: str) -> str | None:
        return next((t.domain for t in self.terms if not t.qualifier and t.name == name), None)

    @property
    def all_qualifier(self) -> str | None:
        return next((t.qualifier for t in self.mechanisms if t.name == "all"), None)


def is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


def parse_spf(text: str) -> SpfRecord | Invalid:
    """A parsed record, or Invalid saying what is wrong; never raises."""
    return parsed_or_invalid(_parse, text)


def _parse(text: str) -> SpfRecord | Invalid:
    words = text.split(" ")
    if words[0].lower() != "v=spf1":
        return Invalid('does not start with "v=spf1"')
    terms: list[Term] = []
    for word in (w for w in words[1:] if w):
        term = _term(word)
        if isinstance(term, Invalid):
            return term
        if not term.qualifier and any(t.name == term.name for t in terms if not t.qualifier) \
                and term.name in ("redirect", "exp"):
            return Invalid(f"{term.name}= appears twice")
        terms.append(term)
    return SpfRecord(tuple(terms))


def _domain(spec: str, word: str) -> str | Invalid:
    if not spec or not _DOMAIN_CHARS.match(spec):
        return Invalid(f"{word!r}: empty or non-ASCII domain")
    if "%" in spec and MACRO.sub("", spec).count("%"):
        return Invalid(f"{word!r}: bad macro")
    return spec


def _term(word: str) -> Term | Invalid:
    name, eq, value = word.partition("=")
    if eq and _NAME.match(name) and ":" not in name and "/" not in name:
        dom = _domain(value, word)
        if isinstance(dom, Invalid) and name.lower() in ("redirect", "exp"):
            return dom
        return Term("", name.lower(), value)
    qualifier = word[0] if word[0] in QUALIFIERS else "+"
    body = word[1:] if word[0] in QUALIFIERS else word
    mech, colon, arg = body.partition(":")
    mech, slash, cidr = mech.partition("/")
    mech = mech.lower()
    if mech == "all":
        return Term(qualifier, mech) if not colon and not slash else Invalid(f"{word!r}: "
                                                                             "all takes nothing")
    if mech in ("ip4", "ip6"):
        if not colon:
            return Invalid(f"{word!r}: {mech} needs an address")
        try:
            net = ipaddress.ip_network(arg, strict=False)
        except ValueError:
            return Invalid(f"{word!r}: not an IP{mech[-1]} address or network")
        if net.version != int(mech[-1]) or (arg.count("/") and not arg.rsplit("/")[1].isdigit()):
            return Invalid(f"{word!r}: not an IP{mech[-1]} address or network")
        return Term(qualifier, mech, network=net)
    if mech not in ("include", "a", "mx", "ptr", "exists"):
        return Invalid(f"{word!r}: unknown mechanism")
    if colon:
        # a:dom/24//64 - the CIDR sits after the domain
        arg, slash, cidr = arg.partition("/")
    if mech in ("include", "exists") and not colon:
        return Invalid(f"{word!r}: {mech} needs a domain")
    c4, c6 = 32, 128
    if slash:
        if mech not in ("a", "mx"):
            return Invalid(f"{word!r}: {mech} takes no CIDR length")
        v4, _, v6 = cidr.partition("//")
        if cidr.startswith("/"):
            v4, v6 = "", cidr[1:]
        if (v4 and not (v4.isdigit() and int(v4) <= 32)) or (
                v6 and not (v6.isdigit() and int(v6) <= 128)) or not (v4 or v6):
            return Invalid(f"{word!r}: bad CIDR length")
        c4, c6 = int(v4 or 32), int(v6 or 128)
    dom = ""
    if colon:
        checked = _domain(arg, word)
        if isinstance(checked, Invalid):
            return checked
        dom = checked
    return Term(qualifier, mech, dom, c4, c6)


@dataclass
class Analysis:
    """Worst-case cost of a domain's SPF tree, and what is wrong in it."""

    lookups: int = 0
    void: int = 0
    problems: list[str] = field(default_factory=list)  # each: "CRIT: ..." or "WARN: ..."
    loops: list[str] = field(default_factory=list)


def spf_records(lookup: Lookup, domain: str) -> tuple[list[str], str]:
    """The v=spf1 TXT strings at ``domain`` and an error text if the query failed."""
    ans = lookup.txt(domain)
    return [t for t in ans.records if is_spf(t)], ans.error


def analyse(lookup: Lookup, domain: str, record: SpfRecord, chain: tuple[str, ...] = (),
            acc: Analysis | None = None) -> Analysis:
    """Count lookups and void lookups through include/redirect, depth first."""
    acc = acc or Analysis()
    chain = (*chain, domain.lower())
    terms = list(record.mechanisms)
    redirect = record.modifier("redirect")
    if redirect is not None and record.all_qualifier is None:  # redirect is ignored with all
        terms.append(Term("+", "redirect", redirect))
    for t in terms:
        if t.name not in (*LOOKUP_TERMS, "redirect"):
            continue
        acc.lookups += 1
        target = t.domain or domain
        if "%" in target:
            continue  # depends on the sender: cannot be followed without one
        if t.name in ("include", "redirect"):
            if target.lower() in chain:
                acc.loops.append(" -> ".join((*chain, target)))
                continue
            if acc.lookups > 3 * MAX_LOOKUPS:
                continue  # far past the limit already: stop walking a runaway tree
            found, error = spf_records(lookup, target)
            if error:
                acc.problems.append(f"UNKNOWN: {t.name} {target}: {error}")
            elif not found:
                acc.void += 1
                acc.problems.append(f"CRIT: {t.name} target {target} has no SPF record "
                                    "(a permanent error for every receiver)")
            elif len(found) > 1:
                acc.problems.append(f"CRIT: {target} publishes {len(found)} SPF records")
            else:
                sub = parse_spf(found[0])
                if isinstance(sub, Invalid):
                    acc.problems.append(f"CRIT: SPF of {target} is invalid: {sub.reason}")
                else:
                    analyse(lookup, target, sub, chain, acc)
        elif _void(lookup, t.name, target):
            acc.void += 1
    return acc


def _void(lookup: Lookup, mechanism: str, target: str) -> bool:
    if mechanism == "a":
        return all(a.void for a in lookup.addresses(target))
    return mechanism == "mx" and lookup.query(target, "MX").void
