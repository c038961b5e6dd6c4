"""DMARC (RFC 7489): a tag parser that never raises, and the report destinations outside
the domain, which must authorize the domain at ``<domain>._report._dmarc.<dest>`` (§7.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from checks.maildns.lookup import Invalid, parsed_or_invalid

POLICIES = ("none", "quarantine", "reject")
KNOWN = ("v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "ri", "rf", "np", "psd",
         "t")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_MAILTO = re.compile(r"mailto:([^@\s!,;]+)@([A-Za-z0-9.-]+\.[A-Za-z0-9-]+)(![0-9]+[kmgtKMGT]?)?\Z",
                     re.ASCII)


@dataclass(frozen=True)
class DmarcRecord:
    tags: dict[str, str]
    unknown: tuple[str, ...] = ()

    @property
    def policy(self) -> str:
        return self.tags["p"]

    def destinations(self) -> list[tuple[str, str]]:
        """(tag, domain) of every rua/ruf mailto: address."""
        out = []
        for tag in ("rua", "ruf"):
            for uri in _uris(self.tags.get(tag, "")):
                m = _MAILTO.match(uri)
                if m:
                    out.append((tag, m.group(2).lower().rstrip(".")))
        return out


def is_dmarc(text: str) -> bool:
    return re.match(r"v\s*=\s*DMARC1\s*(;|\Z)", text) is not None


def _uris(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def parse_dmarc(text: str) -> DmarcRecord | Invalid:
    """A parsed record, or Invalid saying what is wrong; never raises."""
    return parsed_or_invalid(_parse, text)


def _parse(text: str) -> DmarcRecord | Invalid:
    tags: dict[str, str] = {}
    unknown = []
    problems = []  # every one is reported: fixing them one run at a time wastes DNS TTLs
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if i == 0 and (name != "v" or value != "DMARC1"):
            return Invalid('does not start with "v=DMARC1"')
        if not eq or not _TAG.match(name):
            problems.append(f"{part[:80]!r} is not tag=value")
            continue
        name = name.lower()
        if name in tags:
            problems.append(f"tag {name} appears twice")
            continue
        tags[name] = value
        if name not in KNOWN:
            unknown.append(name)
    if "v" not in tags:
        return Invalid('does not start with "v=DMARC1"')
    problems += _validate(tags)
    if problems:
        return Invalid("; ".join(problems))
    return DmarcRecord(tags, tuple(unknown))


def _validate(tags: dict[str, str]) -> list[str]:
    """Every problem of the tag values (and normalizes the policies to lower case)."""
    out = []
    if "p" not in tags:
        out.append("p= (the policy) is missing")
    for tag in ("p", "sp", "np"):
        if tag in tags and tags[tag].lower() not in POLICIES:
            out.append(f"{tag}={tags[tag][:40]} is not none, quarantine or reject")
        elif tag in tags:
            tags[tag] = tags[tag].lower()
    if "pct" in tags and not (tags["pct"].isdigit() and len(tags["pct"]) <= 3
                              and int(tags["pct"]) <= 100):
        out.append(f"pct={tags['pct'][:40]} is not a whole number from 0 to 100")
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ("r", "s"):
            out.append(f"{tag}={tags[tag][:40]} is not r (relaxed) or s (strict)")
    for tag in ("rua", "ruf"):
        if tag in tags:
            uris = _uris(tags[tag])
            if not uris:
                out.append(f"{tag}= is empty")
            out += [f"{tag}: {uri[:80]!r} is not a mailto:address[!size] URI"
                    for uri in uris if not _MAILTO.match(uri)]
    if "fo" in tags and not all(o.strip() in ("0", "1", "d", "s")
                                for o in tags["fo"].split(":")):
        out.append(f"fo={tags['fo'][:40]} is not a colon-separated list of 0, 1, d, s")
    if "ri" in tags and not (tags["ri"].isdigit() and len(tags["ri"]) <= 10):
        out.append(f"ri={tags['ri'][:40]} is not a number of seconds")
    if "rf" in tags and not all(f.strip().lower() == "afrf" for f in tags["rf"].split(":")):
        out.append(f"rf={tags['rf'][:40]} is not afrf")
    return out


def external(domain: str, dest: str) -> bool:
    """Whether reports to ``dest`` need its authorization. Without a public-suffix list,
    a destination is internal when one domain is the other or a subdomain of it."""
    d, r = domain.lower().rstrip("."), dest.lower().rstrip(".")
    return not (d == r or d.endswith("." + r) or r.endswith("." + d))


def authorization_name(domain: str, dest: str) -> str:
    return f"{domain.rstrip('.')}._report._dmarc.{dest}"


def suggested(domain: str) -> str:
    return f'_dmarc.{domain}. TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
