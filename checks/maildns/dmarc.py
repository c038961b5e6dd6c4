"""DMARC (RFC 7489): a tag parser that never raises, and the report destinations outside
the domain, which must authorize the domain at ``<domain>._report._dmarc.<dest>`` (§7.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from checks.maildns.lookup import Invalid

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
    try:
        return _parse(text)
    except Exception as e:  # hostile input must not crash the check
        return Invalid(f"unparsable: {e}")


def _parse(text: str) -> DmarcRecord | Invalid:
    tags: dict[str, str] = {}
    unknown = []
    for i, part in enumerate(p.strip() for p in text.split(";")):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not _TAG.match(name):
            return Invalid(f"{part!r} is not tag=value")
        if i == 0 and (name != "v" or value != "DMARC1"):
            return Invalid('does not start with "v=DMARC1"')
        name = name.lower()
        if name in tags:
            return Invalid(f"tag {name} appears twice")
        tags[name] = value
        if name not in KNOWN:
            unknown.append(name)
    if "v" not in tags:
        return Invalid('does not start with "v=DMARC1"')
    problem = _validate(tags)
    if problem:
        return Invalid(problem)
    return DmarcRecord(tags, tuple(unknown))


def _validate(tags: dict[str, str]) -> str:
    if "p" not in tags:
        return "p= (the policy) is missing"
    for tag in ("p", "sp", "np"):
        if tag in tags and tags[tag].lower() not in POLICIES:
            return f"{tag}={tags[tag]} is not none, quarantine or reject"
        if tag in tags:
            tags[tag] = tags[tag].lower()
    if "pct" in tags and not (tags["pct"].isdigit() and len(tags["pct"]) <= 3
                              and int(tags["pct"]) <= 100):
        return f"pct={tags['pct']} is not a whole number from 0 to 100"
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ("r", "s"):
            return f"{tag}={tags[tag]} is not r (relaxed) or s (strict)"
    for tag in ("rua", "ruf"):
        if tag in tags:
            uris = _uris(tags[tag])
            if not uris:
                return f"{tag}= is empty"
            for uri in uris:
                if not _MAILTO.match(uri):
                    return f"{tag}: {uri!r} is not a mailto:address[!size] URI"
    if "fo" in tags and not all(o.strip() in ("0", "1", "d", "s")
                                for o in tags["fo"].split(":")):
        return f"fo={tags['fo']} is not a colon-separated list of 0, 1, d, s"
    if "ri" in tags and not (tags["ri"].isdigit() and len(tags["ri"]) <= 10):
        return f"ri={tags['ri']} is not a number of seconds"
    if "rf" in tags and not all(f.strip().lower() == "afrf" for f in tags["rf"].split(":")):
        return f"rf={tags['rf']} is not afrf"
    return ""


def external(domain: str, dest: str) -> bool:
    """Whether reports to ``dest`` need its authorization. Without a public-suffix list,
    a destination is internal when one domain is the other or a subdomain of it."""
    d, r = domain.lower().rstrip("."), dest.lower().rstrip(".")
    return not (d == r or d.endswith("." + r) or r.endswith("." + d))


def authorization_name(domain: str, dest: str) -> str:
    return f"{domain.rstrip('.')}._report._dmarc.{dest}"


def suggested(domain: str) -> str:
    return f'_dmarc.{domain}. TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
