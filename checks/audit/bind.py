"""BIND hardening: version hidden, zone transfers restricted, no open resolver, judged on
named's effective configuration as ``named-checkconf -p`` prints it (includes resolved, syntax
checked), seen from a stranger on the internet: the view a stranger lands in, the ACLs a
stranger passes."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown
from checks.dnsservice import BIND_VERSION, BUILTIN_ZONES

ORDER = 70  # place in the audit report (steward.audit entry point)

CONFIGS = ("/etc/named.conf", "/etc/bind/named.conf")  # EL9, Debian
RELOAD = "named-checkconf && rndc reconfig"
# A stranger on the internet: addresses from the documentation ranges, which no real ACL names.
STRANGERS = (ipaddress.ip_address("203.0.113.77"), ipaddress.ip_address("2001:db8:ffff::77"))
TRANSFERRED = frozenset({"primary", "master", "secondary", "slave", "mirror"})
_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(//|#)[^\n]*|/\*.*?\*/|([{};])|([^\s{};"]+)', re.S)
_TITLES = {
    "bind.version": "named keeps its version to itself",
    "bind.allow_transfer": "named transfers zones only to its secondaries",
    "bind.recursion": "named is no open resolver",
}


@dataclass(frozen=True)
class Stmt:
    """One statement: its words and, for ``name { ... };``, the statements in its block."""

    words: tuple[str, ...]
    block: tuple[Stmt, ...] | None = None

    def get(self, name: str) -> Stmt | None:
        return next((s for s in self.block or () if s.words[:1] == (name,)), None)

    def all(self, name: str) -> list[Stmt]:
        return [s for s in self.block or () if s.words[:1] == (name,)]


def parse(text: str) -> Stmt:
    """The statements of a named.conf-style text, as the block of one root statement."""
    tokens = iter([m[1].replace('\\"', '"') if m[1] is not None else m[3] or m[4]
                   for m in _TOKEN.finditer(text)
                   if not m[2] and not m[0].startswith("/*")])

    def block(closing: bool) -> tuple[Stmt, ...]:
        stmts: list[Stmt] = []
        words: list[str] = []
        inner: tuple[Stmt, ...] | None = None
        for tok in tokens:
            if tok == "{":
                inner = block(True)
            elif tok == ";":
                stmts.append(Stmt(tuple(words), inner))
                words, inner = [], None
            elif tok == "}":
                if not closing or words:
                    raise Unreadable("named-checkconf -p output", "unbalanced braces")
                return tuple(stmts)
            else:
                words.append(tok)
        if closing or words:
            raise Unreadable("named-checkconf -p output", "ends inside a statement")
        return tuple(stmts)

    return Stmt(("named.conf",), block(False))


def allows(elements: Sequence[Stmt], addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
           acls: dict[str, Stmt], depth: int = 0) -> bool | None:
    """An address match list for ``addr`` as BIND reads it: the first element that matches
    decides (allowed, or denied when negated); None when none matches. A nested or named list
    matches only when it allows the address (BIND never turns a double negative into yes)."""
    if depth > 32:
        raise Unreadable("named-checkconf -p output", "ACLs nested too deeply")
    for el in elements:
        words = list(el.words)
        negated = bool(words) and words[0].startswith("!")
        if negated:
            words[0] = words[0][1:]
            words = [w for w in words if w]
        if el.block is not None:
            hit = allows(el.block, addr, acls, depth + 1) is True
        elif not words or words[0] in ("none", "localhost", "localnets", "key", "geoip"):
            hit = False  # a stranger is neither local nor holding our TSIG key
        elif words[0] == "any":
            hit = True
        elif words[0] in acls:
            hit = allows(acls[words[0]].block or (), addr, acls, depth + 1) is True
        else:
            try:
                net = ipaddress.ip_network(words[0], strict=False)
            except ValueError:
                continue
            hit = net.version == addr.version and addr in net
        if hit:
            return not negated
    return None


def _open(stmt: Stmt | None, acls: dict[str, Stmt]) -> bool:
    return stmt is not None and any(allows(stmt.block or (), a, acls) for a in STRANGERS)


def _shown(stmt: Stmt | None, view: Stmt) -> str:
    if stmt is None:
        return "not set"
    items = " ".join(f"{' '.join(s.words) or '{...}'};" for s in stmt.block or ())
    where = "" if view.words[1] == "_default" else f" in view {view.words[1]}"
    return f"{' '.join(stmt.words)} {{ {items} }};{where}"


def _inherited(view: Stmt, options: Stmt, *names: str) -> Stmt | None:
    """allow-recursion and allow-query-cache inherit from each other, then from allow-query,
    each looked up in the view, then in options (named's configure_view); None: the default,
    localnets and localhost."""
    return next((s for n in names for s in (view.get(n), options.get(n)) if s), None)


def _views(conf: Stmt) -> list[Stmt]:
    """The IN views a stranger can land in, in order; the whole file when there are none."""
    views = [v for v in conf.all("view") if len(v.words) < 3 or v.words[2].lower() == "in"]
    return views or [Stmt(("view", "_default"), conf.block)]


def _stranger_views(conf: Stmt, acls: dict[str, Stmt]) -> list[Stmt]:
    """The views strangers land in: for each, the first whose match-clients lets it in."""
    found: list[Stmt] = []
    for addr in STRANGERS:
        for view in _views(conf):
            clients = view.get("match-clients")
            if clients is None or allows(clients.block or (), addr, acls):
                if view not in found:
                    found.append(view)
                break
    return found


def _version(tool: str, ctx: Context) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", ctx.run([tool, "-v"]).stdout.strip())
    return (int(m[1]), int(m[2])) if m else (9, 18)


def audit(ctx: Context) -> list[Finding]:
    conf_path = next((p for p in CONFIGS if ctx.exists(p)), None)
    if conf_path is None:
        return []
    tool = ctx.tool("named-checkconf")
    argv = [tool or "named-checkconf", "-p", *(() if ctx.live else ("-t", str(ctx.sysroot))),
            conf_path]
    source = " ".join(argv)
    try:
        if not tool:
            raise Unreadable(source, "named-checkconf is not installed on this host")
        conf = parse(ctx.run(argv).stdout)
        modern = _version(tool, ctx) >= (9, 20)
    except Unreadable as e:
        return [unknown(rule, title, e) for rule, title in _TITLES.items()]
    acls = {s.words[1]: s for s in conf.all("acl") if len(s.words) > 1}
    options = conf.get("options") or Stmt(("options",), ())

    def finding(rule: str, ok: bool, found: str, expected: str, remedy: str, *, why: str,
                severity: Status = Status.WARN) -> Finding:
        return Finding(rule, _TITLES[rule], ok, found, expected, f"{remedy}, then {RELOAD}",
                       why, severity, source)

    version = options.get("version")
    shown = version.words[1] if version and len(version.words) > 1 else ""
    findings = [finding(
        "bind.version", bool(version) and not BIND_VERSION.match(shown),
        f'version "{shown}"' if version else "version not set: named tells its real version",
        'version "none"', f'add version "none"; to the options {{ }} of {conf_path}',
        why="anyone may ask for version.bind; a real version number points at its known "
            "flaws.")]

    views = _stranger_views(conf, acls)
    default = "none" if modern else "any"
    transfers: list[str] = []
    for view in views:
        for zone in view.all("zone"):
            kind = zone.get("type")
            name = zone.words[1].rstrip(".").lower() if len(zone.words) > 1 else ""
            if (kind is None or kind.words[-1] not in TRANSFERRED or name in BUILTIN_ZONES
                    or (len(zone.words) > 2 and zone.words[2].lower() != "in")):
                continue
            acl = zone.get("allow-transfer") or view.get("allow-transfer") \
                or options.get("allow-transfer")
            if acl is None and default == "any":
                transfers.append(f"{name} (allow-transfer not set: BIND before 9.20 lets "
                                 "anyone transfer)")
            elif _open(acl, acls):
                transfers.append(f"{name} ({_shown(acl, view)})")
    findings.append(finding(
        "bind.allow_transfer", not transfers,
        "anyone may transfer " + "; ".join(transfers) if transfers else
        "no zone is transferable by a stranger", "allow-transfer { <secondaries>; } or none",
        f"add allow-transfer {{ none; }}; to the options {{ }} of {conf_path} and "
        "allow-transfer { <the secondaries' addresses or TSIG key>; }; to each zone that "
        "has secondaries",
        why="a zone transfer hands out every name in the zone, the map an attacker wants."))

    opened: list[str] = []
    severity = Status.WARN
    for view in views:
        recursion = view.get("recursion") or options.get("recursion")
        if recursion and recursion.words[-1] in ("no", "false", "0"):
            continue

        rec = _inherited(view, options, "allow-recursion", "allow-query-cache", "allow-query")
        cache = _inherited(view, options, "allow-query-cache", "allow-recursion",
                           "allow-query")
        if _open(rec, acls):
            severity = Status.CRIT
            opened.append(f"recursion for anyone: {_shown(rec, view)}")
        if _open(cache, acls):
            opened.append(f"cache answers for anyone: {_shown(cache, view)}")
    findings.append(finding(
        "bind.recursion", not opened, "; ".join(opened) or "recursion closed to strangers",
        "recursion no, or allow-recursion { localnets; localhost; } (or trusted networks)",
        f"in the options {{ }} of {conf_path}: recursion no; for an authoritative-only "
        "server, or allow-recursion { localnets; localhost; }; and allow-query-cache "
        "{ localnets; localhost; };",
        why="an open resolver amplifies DDoS attacks against third parties and lets anyone "
            "probe and poison its cache.", severity=severity))
    return findings
