"""The authentication rules of one domain: SPF (record, cost, sending IPs), DMARC (record,
policy, report authorization) and DKIM (each selector's key against the local one)."""

from __future__ import annotations

import base64
from pathlib import Path

from agent.model import Metric, Result, Status, worst
from checks.maildns import dkim, dmarc, spf, spfeval
from checks.maildns.lookup import Invalid
from checks.maildns.records import Ctx

_LEVEL = {"CRIT": Status.CRIT, "WARN": Status.WARN, "UNKNOWN": Status.UNKNOWN}


def suggested_spf(ctx: Ctx, sending_ips: tuple[str, ...], found: list[str]) -> str:
    """The SPF record to publish, from what was found: ``mx`` only when the domain has MX
    hosts, the appliance's sending addresses, and the includes the domain already has (its
    mail provider, its newsletter service). A placeholder says what is missing."""
    d = ctx.domain
    mx = ctx.lookup.query(d, "MX")
    terms = []
    if mx.kind == "ok" and any(r.split(" ", 1)[-1] not in ("", ".") for r in mx.records):
        terms.append("mx")
    terms += [f"ip{'6' if ':' in ip else '4'}:{ip}" for ip in sending_ips]
    for text in found:
        for word in text.split()[1:]:
            name = word[1:] if word[:1] == "+" else word
            if name.lower().startswith("include:") and len(name) <= 263:
                terms.append(name)
    terms = list(dict.fromkeys(terms))
    record = f'{d}. TXT "v=spf1 {" ".join(terms)} -all"' if terms else (
        f'{d}. TXT "v=spf1 ip4:<address this appliance sends from> -all" ({d} has no MX; '
        "set sending_ips in [checks.maildns] to have the addresses filled in)")
    return record


def spf_rule(ctx: Ctx, sending_ips: tuple[str, ...]) -> list[Result]:
    d = ctx.domain
    found, error = spf.spf_records(ctx.lookup, d)
    if error:
        return [ctx.result("spf", Status.UNKNOWN, f"SPF lookup failed: {error}",
                           remedy="check the resolvers")]
    publish = suggested_spf(ctx, sending_ips, found)
    if not found:
        return [ctx.result("spf", Status.CRIT, f"{d} publishes no SPF record",
                           remedy=f"publish {publish}")]
    if len(found) > 1:
        return [ctx.result("spf", Status.CRIT, f"{d} publishes {len(found)} SPF records "
                           "(a permanent error for every receiver)", found,
                           remedy=f"merge them into one and delete the others: {publish}")]
    record = spf.parse_spf(found[0])
    if isinstance(record, Invalid):
        return [ctx.result("spf", Status.CRIT, f"SPF record is invalid: {record.reason}",
                           [found[0]], remedy=f"fix the record, e.g. {publish}")]
    found_problems = []
    analysis = spf.analyse(ctx.lookup, d, record)
    for p in analysis.problems:
        level, _, text = p.partition(": ")
        found_problems.append((_LEVEL[level], text, "fix or remove that include/redirect"))
    if analysis.loops:
        found_problems.append((Status.CRIT, f"include/redirect loop: {analysis.loops[0]}",
                               "remove the include that points back"))
    if analysis.lookups > spf.MAX_LOOKUPS:
        found_problems.append((Status.CRIT, f"{analysis.lookups} DNS lookups (RFC 7208 allows "
                               f"{spf.MAX_LOOKUPS})", "replace includes, a and mx by ip4:/ip6: "
                               "ranges (flatten the record) until at most 10 lookups remain"))
    if analysis.void > spf.MAX_VOID:
        found_problems.append((Status.CRIT, f"{analysis.void} void lookups (RFC 7208 allows "
                               f"{spf.MAX_VOID})", "remove the a:/mx:/include: terms whose "
                               "names have no records"))
    qual = record.all_qualifier
    if qual == "+":
        found_problems.append((Status.CRIT, "+all lets anyone send as " + d,
                               f"end the record with -all (or ~all): {publish}"))
    elif qual == "?":
        found_problems.append((Status.WARN, "?all leaves unlisted senders neutral",
                               "end the record with -all (or ~all)"))
    elif qual is None and record.modifier("redirect") is None:
        found_problems.append((Status.WARN, "no all term: unlisted senders are neutral",
                               "end the record with -all (or ~all)"))
    details = [f"record: {found[0]}", f"DNS lookups: {analysis.lookups}, void: {analysis.void}",
               *(f"{s.long_name}: {t}" for s, t, _ in found_problems)]
    metrics = (Metric("spf_lookups", analysis.lookups, "", "", str(spf.MAX_LOOKUPS), 0),)
    out = []
    if found_problems:
        status = worst(s for s, _, _ in found_problems)
        first = next(p for p in found_problems if p[0] is status)
        out.append(ctx.result("spf", status, f"SPF: {first[1]}", details,
                              remedy="; ".join(dict.fromkeys(r for _, _, r in found_problems)),
                              metrics=metrics))
    else:
        strength = "-all" if qual == "-" else "~all (-all is stricter)" if qual == "~" else \
            "redirect"
        out.append(ctx.result("spf", Status.OK, f"SPF valid, {analysis.lookups} lookups, "
                              f"{strength}", details, metrics=metrics))
    for ip in sending_ips:
        out.append(_spf_ip(ctx, ip))
    return out


def _spf_ip(ctx: Ctx, ip: str) -> Result:
    d = ctx.domain
    verdict = spfeval.check_host(ctx.lookup, ip, d)
    add = f"ip{'6' if ':' in ip else '4'}:{ip}"
    status = {"pass": Status.OK, "softfail": Status.WARN, "neutral": Status.WARN,
              "temperror": Status.UNKNOWN}.get(verdict, Status.CRIT)
    if status is Status.OK:
        return ctx.result(f"spf:{ip}", status, f"SPF permits {ip} (pass)")
    return ctx.result(f"spf:{ip}", status, f"SPF of {d} gives {verdict} for sending IP {ip}",
                      remedy=f"add {add} to the SPF record of {d} (before the all term)"
                      if verdict not in ("permerror", "temperror") else
                      f"fix the SPF record of {d} (see maildns:{d}:spf), then add {add}")


def dmarc_rule(ctx: Ctx) -> Result:
    d = ctx.domain
    name = f"_dmarc.{d}"
    ans = ctx.lookup.txt(name)
    if ans.kind == "error":
        return ctx.result("dmarc", Status.UNKNOWN, f"DMARC lookup failed: {ans.error}",
                          remedy="check the resolvers")
    found = [t for t in ans.records if dmarc.is_dmarc(t)]
    if not found:
        return ctx.result("dmarc", Status.CRIT, f"{d} publishes no DMARC record",
                          [*(f"TXT at {name}: {t}" for t in ans.records)],
                          remedy=f"publish {dmarc.suggested(d)}")
    if len(found) > 1:
        return ctx.result("dmarc", Status.CRIT, f"{name} has {len(found)} DMARC records "
                          "(receivers then ignore DMARC)", found,
                          remedy="keep one v=DMARC1 record and delete the others")
    record = dmarc.parse_dmarc(found[0])
    if isinstance(record, Invalid):
        errors = record.reason.split("; ")
        what = "is invalid" if len(errors) == 1 else f"has {len(errors)} errors"
        return ctx.result("dmarc", Status.CRIT, f"DMARC record {what}: {record.reason}",
                          [f"record: {found[0][:300]}", *(f"error: {e}" for e in errors)],
                          remedy=f"fix {'it' if len(errors) == 1 else 'each'}, e.g. "
                          f"{dmarc.suggested(d)}")
    problems: list[tuple[Status, str, str]] = []
    for tag, dest in dict.fromkeys(record.destinations()):
        if not dmarc.external(d, dest):
            continue
        auth = ctx.lookup.txt(dmarc.authorization_name(d, dest))
        if auth.kind == "error":
            problems.append((Status.UNKNOWN, f"{tag} to {dest}: {auth.error}",
                             "check the resolvers"))
        elif not any(dmarc.is_dmarc(t) for t in auth.records):
            problems.append((Status.CRIT, f"{tag} destination {dest} has not authorized reports "
                             f"for {d}", f'publish {dmarc.authorization_name(d, dest)}. TXT '
                             f'"v=DMARC1" in the zone of {dest}, or send {tag} to an address '
                             f"at {d}"))
    if record.policy == "none":
        problems.append((Status.WARN, "p=none: the policy is unenforced",
                         f"once reports look clean, set p=quarantine (then p=reject) at {name}"))
    if record.tags.get("pct", "100") != "100":
        problems.append((Status.WARN, f"pct={record.tags['pct']}: the policy applies to part "
                         "of the mail only", f"set pct=100 at {name}"))
    if record.unknown:
        problems.append((Status.WARN, f"unknown tag(s) {', '.join(record.unknown)} are ignored "
                         "by receivers", f"correct or remove them at {name}"))
    details = [f"record: {found[0]}", *(f"{s.long_name}: {t}" for s, t, _ in problems)]
    if not problems:
        return ctx.result("dmarc", Status.OK, f"DMARC p={record.policy}", details)
    status = worst(s for s, _, _ in problems)
    first = next(p for p in problems if p[0] is status)
    more = f" (and {len(problems) - 1} more, see details)" if len(problems) > 1 else ""
    return ctx.result("dmarc", status, f"DMARC: {first[1]}{more}", details,
                      remedy="; ".join(dict.fromkeys(r for _, _, r in problems)))


def dkim_rule(ctx: Ctx, selector: str, keyfile: str | None) -> Result:
    d = ctx.domain
    rule = f"dkim:{selector}"
    name = f"{selector}._domainkey.{d}"
    ans = ctx.lookup.txt(name)
    local, local_error = None, ""
    local_ed: bytes | None = None
    if keyfile:
        try:
            pem = Path(keyfile).read_text(errors="replace")[:65536]
            try:
                local = dkim.private_key_numbers(pem)
            except ValueError as e:
                if "not an RSA key" not in str(e):
                    raise
                local_ed = dkim.ed25519_public(pem)  # RFC 8463 keys are PKCS#8 too
        except (OSError, ValueError) as e:
            local_error = f"cannot read the private key {keyfile}: {e}"
    publish = (dkim.publishable(selector, d, local) if local else
               f'{name}. TXT "v=DKIM1; k=ed25519; p={base64.b64encode(local_ed).decode()}"'
               if local_ed else
               f'{name}. TXT "v=DKIM1; k=rsa; p=<base64 public key>" (opendkim-genkey '
               f"-b 2048 -s {selector} -d {d} writes it)")
    if ans.kind == "error":
        return ctx.result(rule, Status.UNKNOWN, f"DKIM lookup failed: {ans.error}",
                          remedy="check the resolvers")
    # A TXT there that is neither tagged v=DKIM1 nor carries p= is someone else's record.
    records = [t for t in ans.records if "p=" in t or t.lstrip().startswith("v=DKIM1")]
    if not records:
        return ctx.result(rule, Status.CRIT, f"no DKIM key published at {name}",
                          remedy=f"publish {publish}")
    if len(records) > 1:
        return ctx.result(rule, Status.CRIT, f"{name} has {len(records)} key records",
                          records, remedy=f"keep one: {publish}")
    record = dkim.parse_dkim(records[0])
    if isinstance(record, Invalid):
        return ctx.result(rule, Status.CRIT, f"DKIM record is invalid: {record.reason}",
                          [records[0][:300]], remedy=f"publish {publish}")
    if record.revoked:
        return ctx.result(rule, Status.CRIT, f"DKIM key {selector} is revoked (empty p=)",
                          remedy=f"sign with a current selector, or publish {publish}")
    details = [f"key: {record.key_type}" + (f", {record.bits} bits" if record.rsa else "")]
    problems: list[tuple[Status, str, str]] = []
    if record.rsa and record.bits < 1024:
        problems.append((Status.CRIT, f"{record.bits}-bit RSA key is breakable and "
                         "rejected by receivers", f"generate a 2048-bit key: "
                         f"opendkim-genkey -b 2048 -s <new selector> -d {d}"))
    elif record.rsa and record.bits < 2048:
        problems.append((Status.WARN, f"{record.bits}-bit RSA key is weak",
                         f"rotate to a 2048-bit key: opendkim-genkey -b 2048 -s <new selector> "
                         f"-d {d}"))
    if local_error:
        problems.append((Status.UNKNOWN, local_error, f"make {keyfile} readable to steward"))
    elif local_ed is not None and (record.key_type != "ed25519" or record.key != local_ed):
        problems.append((Status.CRIT, f"published key does not match the Ed25519 private key "
                         f"{keyfile}: receivers reject every signature", f"publish {publish}"))
    elif local_ed is not None:
        details.append(f"matches the Ed25519 private key {keyfile}")
    elif local and record.rsa and record.rsa != local:
        problems.append((Status.CRIT, f"published key does not match the private key "
                         f"{keyfile}: receivers reject every signature", f"publish {publish}"))
    elif local and record.rsa:
        details.append(f"matches the private key {keyfile}")
    elif not keyfile:
        details.append("no local private key known: match not checked")
    details += [f"{s.long_name}: {t}" for s, t, _ in problems]
    if not problems:
        return ctx.result(rule, Status.OK, f"DKIM {selector}: {details[0][5:]}", details)
    status = worst(s for s, _, _ in problems)
    first = next(p for p in problems if p[0] is status)
    return ctx.result(rule, status, f"DKIM {selector}: {first[1]}", details,
                      remedy="; ".join(dict.fromkeys(r for _, _, r in problems)))
