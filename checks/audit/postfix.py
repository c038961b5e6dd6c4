"""Postfix hardening rules, judged on the effective configuration ``postconf`` reports for the
audited system's /etc/postfix: main.cf values with each master.cf service's ``-o`` overrides
(read in checks.audit.postfix_config), and where mail for postmaster and root ends up."""

from __future__ import annotations

import re
from functools import partial

from agent.model import Status
from checks.audit.base import Context, Finding, Rules, Verdict
from checks.audit.postfix_config import (
    MAIN,
    PORT465,
    PORT587,
    RESTRICTION_LISTS,
    Config,
    Service,
    command,
    load,
    logical_lines,
    reachable,
    reload,
    tokens,
)

ORDER = 40  # place in the audit report (steward.audit entry point)

HELO_CHECKS = ("reject_invalid_helo_hostname", "reject_non_fqdn_helo_hostname")
RELAY_GUARDS = {"reject_unauth_destination", "defer_unauth_destination", "reject", "defer"}
PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
SAFE_PROTOCOLS = "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"  # ">=TLSv1.2" needs Postfix 3.6; EL9 has 3.5
FILE_MAPS = {"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"}
SUBMISSION = {"smtpd_tls_security_level": "encrypt", "smtpd_tls_auth_only": "yes"}

RULES: Rules[Config] = Rules()
rule = RULES.rule  # registers a judge; its docstring is the rationale unless ``why`` is given


def flag(param: str, cfg: Config) -> Verdict:
    svc = cfg.port25
    return Verdict(cfg.yes(param, svc), cfg.shown(param, svc), f"{param} = yes",
                   cfg.fix(svc, **{param: "yes"}))


rule("postfix.vrfy", "SMTP VRFY disabled", why="VRFY lets anyone test which mailboxes "
     "exist; spammers use it to harvest addresses.")(partial(flag, "disable_vrfy_command"))
rule("postfix.helo_required", "HELO/EHLO required", why="Clients that skip HELO escape the "
     "HELO checks that stop most spam bots.")(partial(flag, "smtpd_helo_required"))


@rule("postfix.helo_checks", "invalid and non-FQDN HELO names rejected")
def helo_checks(cfg: Config) -> Verdict:
    """A syntactically invalid or unqualified HELO name is a strong sign of a spam bot."""
    svc = cfg.port25
    # with smtpd_delay_reject=no the client list runs at connect time, before any HELO
    lists = RESTRICTION_LISTS if cfg.yes("smtpd_delay_reject", svc) else RESTRICTION_LISTS[1:]
    active = {t for name in lists for t in reachable(tokens(cfg.get(name, svc)))}
    missing = [c for c in HELO_CHECKS if c not in active]
    items = tokens(cfg.get("smtpd_helo_restrictions", svc)) or \
        ["permit_mynetworks", "permit_sasl_authenticated"]
    at = len(reachable(items))  # insert before an unconditional permit
    wanted = items[:at] + [c for c in HELO_CHECKS if c not in items[:at]] + \
        [t for t in items[at:] if t not in HELO_CHECKS]
    return Verdict(not missing, f"{' and '.join(missing)} not reached in any restriction list"
                   if missing else "both reached in the restriction lists",
                   f"{' and '.join(HELO_CHECKS)} in smtpd_helo_restrictions",
                   cfg.fix(svc, smtpd_helo_restrictions=", ".join(wanted)))


@rule("postfix.banner", "SMTP banner without version")
def banner(cfg: Config) -> Verdict:
    """The version in the greeting tells attackers which exploits to try."""
    value = cfg.get("smtpd_banner", cfg.port25)
    leaks = "mail_version" in value or \
        re.search(r"(?<![\w.])\d+\.\d+(?:\.\d+)?(?![\w.])", value) is not None
    return Verdict(not leaks, cfg.shown("smtpd_banner", cfg.port25),
                   "smtpd_banner = $myhostname ESMTP (no version)",
                   cfg.fix(cfg.port25, smtpd_banner="$myhostname ESMTP"))


@rule("postfix.tls_inbound", "STARTTLS offered on port 25", Status.CRIT)
def tls_inbound(cfg: Config) -> Verdict:
    """Without STARTTLS, mail from other servers crosses the Internet in cleartext; requiring
    it (encrypt) stops servers without TLS from delivering at all."""
    level = cfg.level(cfg.port25)
    found = f"smtpd_tls_security_level = {level}" + (
        ": servers without STARTTLS cannot deliver here (RFC 3207: a public MX must not "
        "require TLS; require it on submission)" if level == "encrypt" else "")
    return Verdict(level == "may", found, "smtpd_tls_security_level = may",
                   cfg.fix(cfg.port25, smtpd_tls_security_level="may"),
                   Status.WARN if level == "encrypt" else None)


@rule("postfix.tls_cert", "TLS certificate and key configured", Status.CRIT)
def tls_cert(cfg: Config) -> Verdict:
    """Without a readable certificate and key the server cannot offer TLS at all."""
    svc = cfg.port25
    chain = tokens(cfg.get("smtpd_tls_chain_files", svc))
    files = chain or [cfg.get("smtpd_tls_cert_file", svc), cfg.get("smtpd_tls_key_file", svc)]
    missing = [f for f in files if f and not cfg.ctx.real_path(f).is_file()]
    found = ("smtpd_tls_chain_files" if chain else "smtpd_tls_cert_file, _key_file") + \
        f" = {', '.join(files)}" + (f" (missing: {', '.join(missing)})" if missing else "")
    return Verdict(all(files) and not missing, found, "a certificate and key file that exist",
                   cfg.fix(svc, smtpd_tls_cert_file="/etc/pki/tls/certs/postfix.pem",
                           smtpd_tls_key_file="/etc/pki/tls/private/postfix.key"))


@rule("postfix.submission", "submission service requires TLS", Status.CRIT)
def submission(cfg: Config) -> Verdict:
    """Mail clients should submit on 587 (or 465) where TLS is mandatory, so that passwords and
    mail never cross the network in cleartext."""
    s587, s465 = cfg.smtpd(*PORT587), cfg.smtpd(*PORT465)
    expected = "a submission service with smtpd_tls_security_level = encrypt and " \
        "smtpd_tls_auth_only = yes"
    if not s587 and not s465:
        new = Service("submission", "inet", "smtpd", {})
        return Verdict(False, "no submission service in master.cf", expected, reload(
            f'postconf -M {new.key}="submission inet n - n - - smtpd"',
            command({**SUBMISSION, "smtpd_sasl_auth_enable": "yes"}, new)), Status.WARN)
    bad, fixes = [], []
    for svc in s587 + s465:  # 465 is TLS from the first byte: wrappermode
        want = SUBMISSION if svc in s587 else {"smtpd_tls_wrappermode": "yes"}
        wrong = {k: v for k, v in want.items() if cfg.get(k, svc).lower() != v}
        if wrong:
            bad.append(f"{svc.key}: " + ", ".join(cfg.shown(k, svc) for k in wrong))
            fixes.append(command(wrong, svc))
    found = "; ".join(bad) or ", ".join(s.key for s in s587 + s465) + " require TLS"
    return Verdict(not bad, found, expected,
                   reload(*fixes) if fixes else reload(command(SUBMISSION, (s587 or s465)[0])))


@rule("postfix.smtp_auth", "no AUTH before STARTTLS on port 25", Status.CRIT)
def smtp_auth(cfg: Config) -> Verdict:
    """AUTH offered before STARTTLS lets a client send its password in cleartext."""
    svc = cfg.port25
    ok = not cfg.yes("smtpd_sasl_auth_enable", svc) or cfg.yes("smtpd_tls_auth_only", svc) \
        or cfg.level(svc) == "encrypt"
    return Verdict(ok, f"{cfg.shown('smtpd_sasl_auth_enable', svc)}, "
                   f"{cfg.shown('smtpd_tls_auth_only', svc)}",
                   "smtpd_sasl_auth_enable = no, or smtpd_tls_auth_only = yes",
                   cfg.fix(svc, smtpd_tls_auth_only="yes"))


def allowed_protocols(value: str) -> list[str]:
    """The protocols a Postfix protocol list leaves enabled ("!SSLv2, !SSLv3", ">=TLSv1.2")."""
    index = {p.lower(): i for i, p in enumerate(PROTOCOLS)}
    keep, named = set(range(len(PROTOCOLS))), set()
    for op, name in re.findall(r"(>=|<=|!)?([^\s,:]+)", value.lower()):
        if name in index:
            i = index[name]
            keep -= {">=": set(range(i)), "<=": set(range(i + 1, 9)), "!": {i}}.get(op, set())
            named |= set() if op else {i}
    return [p for i, p in enumerate(PROTOCOLS) if i in keep and (not named or i in named)]


@rule("postfix.tls_protocols", "only TLS 1.2 or later")
def tls_protocols(cfg: Config) -> Verdict:
    """SSLv2/SSLv3 are broken and TLS 1.0/1.1 deprecated (RFC 8996). EL9's DEFAULT crypto policy
    refuses TLS 1.0/1.1 as well, the LEGACY policy does not."""
    both, bad, fixes, weakest = ("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols"), [], \
        [], "TLSv1.2"
    for svc in [None, *cfg.listeners]:  # main.cf, then the services that override it
        wrong = {}
        for param in (p for p in both if svc is None or p in svc.overrides):
            weak = [p for p in allowed_protocols(cfg.get(param, svc)) if p in PROTOCOLS[:4]]
            if weak:
                weakest = min(weakest, weak[0], key=PROTOCOLS.index)
                bad.append(f"{svc.key + ': ' if svc else ''}{cfg.shown(param, svc)} allows "
                           f"{', '.join(weak)}")
                wrong[param] = SAFE_PROTOCOLS
        fixes += [command(wrong, svc)] if wrong else []
    return Verdict(not bad, "; ".join(bad) or "only TLSv1.2 and later",
                   f"{' and '.join(both)} = {SAFE_PROTOCOLS} (or >=TLSv1.2)",
                   reload(*(fixes or [command(dict.fromkeys(both, SAFE_PROTOCOLS))])),
                   Status.CRIT if weakest.startswith("SSL") else Status.WARN)


@rule("postfix.relay", "not an open relay", Status.CRIT)
def relay(cfg: Config) -> Verdict:
    """An open relay is abused for spam within hours and puts the server on blocklists. Postfix
    stops at the first permit, so reject_unauth_destination must come before any bare permit."""
    everyone = {"0.0.0.0/0", "[::]/0", "::/0"} & set(tokens(cfg.get("mynetworks")))
    lists = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")

    def guarded(svc: Service, name: str) -> bool:
        items = reachable(tokens(cfg.get(name, svc)))
        if everyone and "permit_mynetworks" in items:  # that permits every client
            items = items[:items.index("permit_mynetworks")]
        return bool(RELAY_GUARDS & set(items))
    open_on = [s for s in cfg.listeners if not any(guarded(s, n) for n in lists)]
    at = open_on[0] if open_on else cfg.port25
    found = "; ".join(cfg.shown(n, at) for n in lists) + \
        (f"; {cfg.shown('mynetworks')}" if everyone else "")
    if open_on:
        found = f"open relay on {', '.join(s.key for s in open_on)}: {found}"
    fix = cfg.fix(at, smtpd_relay_restrictions="permit_mynetworks, permit_sasl_authenticated, "
                  "reject_unauth_destination")
    fix = reload(command({"mynetworks": "127.0.0.0/8 [::1]/128"}), fix) if everyone else fix
    return Verdict(not open_on, found, "reject_unauth_destination before any permit in "
                   "smtpd_relay_restrictions or smtpd_recipient_restrictions", fix)


def deliveries(name: str, table: dict[str, list[str]], seen: frozenset[str] = frozenset()
               ) -> list[str]:
    """Where mail for local ``name`` ends up: addresses, "mailbox:user", files, commands."""
    if name in seen or name not in table:
        return [f"mailbox:{name}"]
    out = []
    for target in table[name]:
        if target.startswith("\\"):
            out.append(f"mailbox:{target[1:]}")
        elif "@" in target or target.startswith(("/", "|", ":include:")):
            out.append(target)
        else:
            out += deliveries(target.lower(), table, seen | {name})
    return out


def aliased(who: str, cfg: Config) -> Verdict:
    """Follow ``who`` through the alias files of alias_maps (their text sources)."""
    table: dict[str, list[str]] = {}
    where: dict[str, str] = {}  # name -> the file of its entry
    files, other = [], []
    for m in tokens(cfg.get("alias_maps")):
        kind, _, path = m.partition(":")
        if kind not in FILE_MAPS or not path.startswith("/"):
            other.append(m)
            continue
        files.append(path)
        for line in logical_lines(cfg.ctx.read(path) or ""):
            name, colon, rest = line.partition(":")
            if colon:  # the first entry wins, as with postalias
                key = name.strip().strip('"').lower()
                table.setdefault(key, [t.strip().strip('"') for t in rest.split(",") if t.strip()])
                where.setdefault(key, path)
    ends, ok = deliveries(who, table), None
    if who == "postmaster":
        target, ok = "root", who in table and ends != ["/dev/null"]
    else:  # local(8) also honours /root/.forward
        forward = (cfg.ctx.read("/root/.forward") or "").strip()
        target, ok = "admin@example.com", bool(forward) or any(
            e != "mailbox:root" and not e.startswith("/") for e in ends)
        ends += [f"/root/.forward: {forward.splitlines()[0]}"] if forward else []
    found = f"{who} -> {', '.join(ends)} ({cfg.shown('alias_maps')})"
    if not ok and other:
        ok, found = None, f"{found}; {', '.join(other)} not inspected"
    fix = f'echo "{who}: {target}" >> {(files or ["/etc/aliases"])[0]} && newaliases'
    if who in where:  # postalias keeps a name's first entry: another one would change nothing
        fix = f'change the "{who}:" entry in {where[who]} to "{who}: {target}", then newaliases'
    return Verdict(ok, found, f"{who} aliased to {'a person' if who == 'root' else 'root'}", fix)


rule("postfix.postmaster", "postmaster alias", why="RFC 5321 requires a working postmaster "
     "address; other servers report problems there.")(partial(aliased, "postmaster"))
rule("postfix.root_alias", "root's mail reaches a person", why="Cron, smartd and other "
     "warnings go to root; unread in /var/spool/mail/root they help no one.")(
    partial(aliased, "root"))


def audit(ctx: Context) -> list[Finding]:
    if not ctx.exists(MAIN):
        return []
    return RULES.audit(ctx, load)
