"""httpd hardening: ServerTokens, ServerSignature, TraceEnable and SSLProtocol at server level
and in every <VirtualHost>, read from the configuration files (httpd has no tool that prints
these), following Include/IncludeOptional and <IfModule>/<IfDefine> as httpd would."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown

ORDER = 60  # place in the audit report (steward.audit entry point)

# (main file, compiled-in ServerRoot, how to apply a change): EL9's httpd, then Debian's apache2.
LAYOUTS = (("/etc/httpd/conf/httpd.conf", "/etc/httpd",
            "apachectl configtest && systemctl reload httpd"),
           ("/etc/apache2/apache2.conf", "/etc/apache2",
            "apache2ctl configtest && systemctl reload apache2"))
# Modules built into the binary, so <IfModule> sees them without a LoadModule line.
STATIC = frozenset({"core.c", "http_core.c", "mod_so.c", "so_module", "core_module",
                    "http_module", "mod_unixd.c", "unixd_module", "mod_version.c",
                    "version_module", "mod_log_config.c", "log_config_module"})
_WRITTEN = ("ServerTokens", "ServerSignature", "TraceEnable", "SSLProtocol")
WATCHED = frozenset(w.lower() for w in _WRITTEN)
CONDITIONS = frozenset({"ifmodule", "ifdefine", "iffile", "ifversion", "ifdirective",
                        "ifsection"})
MAX_DEPTH = 64
PROTOCOLS = ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
WEAK = ("SSLv3", "TLSv1", "TLSv1.1")
GOOD_PROTOCOL = "SSLProtocol -all +TLSv1.2 +TLSv1.3"
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'|(\S+)')
_VAR = re.compile(r"\$\{(\w+)\}")
_TITLES = {
    "httpd.server_tokens": "httpd names only itself (ServerTokens Prod)",
    "httpd.server_signature": "httpd error pages carry no signature (ServerSignature Off)",
    "httpd.trace_enable": "httpd refuses TRACE (TraceEnable Off)",
    "httpd.ssl_protocol": "httpd speaks TLS 1.2 or later only (SSLProtocol)",
}


@dataclass(frozen=True)
class Directive:
    name: str  # lower case
    args: tuple[str, ...]
    file: str  # the audited system's path
    line: int
    vhost: str = ""  # "" at server level, else "<VirtualHost *:443> at FILE:LINE"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" + (f" (in {self.vhost})" if self.vhost else "")

    @property
    def text(self) -> str:
        return " ".join((self.written, *self.args))

    @property
    def written(self) -> str:
        return next(w for w in _WRITTEN if w.lower() == self.name)


@dataclass
class Config:
    """What the parse keeps: the watched directives in file order."""

    server_root: str
    directives: list[Directive] = field(default_factory=list)
    modules: set[str] = field(default_factory=lambda: set(STATIC))
    defines: dict[str, str] = field(default_factory=dict)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, logical line) with backslash continuations joined, comments and
    blank lines left out."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line, pending = (pending + raw).strip(), ""
        if line and not line.startswith("#"):
            yield start, line
    if pending.strip() and not pending.lstrip().startswith("#"):
        yield start, pending.strip()


def _words(text: str, defines: dict[str, str]) -> list[str]:
    text = _VAR.sub(lambda m: defines.get(m[1], os.environ.get(m[1], m[0])), text)
    return [next(g for g in m.groups() if g is not None) for m in _WORD.finditer(text)]


def _condition(kind: str, arg: str, cfg: Config, ctx: Context) -> bool:
    negate, arg = arg.startswith("!"), arg.lstrip("!")
    if kind == "ifmodule":
        held = arg in cfg.modules
    elif kind == "ifdefine":
        held = arg in cfg.defines
    elif kind == "iffile":
        held = ctx.exists(_absolute(arg, cfg))
    else:  # IfVersion, IfDirective, IfSection: assume the installed httpd has it
        return True
    return held != negate


def _absolute(path: str, cfg: Config) -> str:
    return path if path.startswith("/") else f"{cfg.server_root.rstrip('/')}/{path}"


def _included(ctx: Context, pattern: str, optional: bool, here: str) -> list[str]:
    """The files an Include names, in the order httpd reads them."""
    files: list[str] = []
    for p in ctx.glob(pattern):
        real = ctx.real_path(p)
        if real.is_dir():  # a directory: every file in it and below, in name order
            for d, dirs, names in os.walk(real):
                dirs.sort()
                rel = os.path.relpath(d, real)
                files += [os.path.normpath(f"{p}/{rel}/{n}") for n in sorted(names)]
        elif real.is_file() or (real.exists() and not glob.has_magic(pattern)):
            files.append(p)
    if not files and not optional:
        raise Unreadable(here, f"Include {pattern}: no such file")
    return files


def _parse(ctx: Context, cfg: Config, path: str, vhost: str | None, depth: int) -> None:
    """Read one file; ``vhost`` is None inside sections that do not matter here (<Directory>,
    <Location>, <If>, <Macro>...), "" at server level."""
    if depth > MAX_DEPTH:
        raise Unreadable(path, "Include nested too deeply")
    text = ctx.text(path)
    # (section as written, line, the context outside it, active outside it); a section closes
    # in the file that opens it
    stack: list[tuple[str, int, str | None, bool]] = []
    active = True
    for number, line in _lines(text):
        here = f"{path}:{number}"
        if line.startswith("</"):
            name = line[2:].rstrip(">").strip().lower()
            if not stack or stack[-1][0].lower() != name:
                opened = f"<{stack[-1][0]}> of line {stack[-1][1]}" if stack else "nothing"
                raise Unreadable(here, f"{line} closes {opened}")
            _, _, vhost, active = stack.pop()
            continue
        if line.startswith("<"):
            words = _words(line[1:].rstrip(">").rstrip(), cfg.defines)
            kind = words[0].lower() if words else ""
            stack.append((words[0] if words else "", number, vhost, active))
            if kind in CONDITIONS:
                active = active and _condition(kind, words[1] if len(words) > 1 else "",
                                               cfg, ctx)
            elif kind == "virtualhost" and vhost == "":
                vhost = f"<VirtualHost {' '.join(words[1:])}> at {here}"
            else:
                vhost = None
            continue
        if not active:
            continue
        words = _words(line, cfg.defines)
        name, args = words[0].lower(), tuple(words[1:])
        if name in ("include", "includeoptional") and args:
            for p in _included(ctx, _absolute(args[0], cfg), name == "includeoptional", here):
                _parse(ctx, cfg, p, vhost, depth + 1)
        elif vhost is None:
            continue
        elif name == "loadmodule" and len(args) >= 2:
            cfg.modules.update((args[0], os.path.basename(args[1]).replace(".so", ".c")))
        elif name == "define" and args:
            cfg.defines[args[0]] = " ".join(args[1:])
        elif name == "undefine" and args:
            cfg.defines.pop(args[0], None)
        elif name == "serverroot" and args and not vhost:
            cfg.server_root = args[0]
        elif name in WATCHED:
            cfg.directives.append(Directive(name, args, path, number, vhost))
    if stack:
        raise Unreadable(f"{path}:{stack[-1][1]}", f"<{stack[-1][0]}> is never closed")


def protocols(args: tuple[str, ...]) -> set[str]:
    """The protocols an SSLProtocol line enables, read left to right as mod_ssl does: +X adds,
    -X removes, a bare X starts over; "all" is every protocol, SSLv3 included where OpenSSL
    still has it (judged as if it did)."""
    enabled: set[str] = set()
    for word in args:
        sign, name = (word[0], word[1:]) if word[:1] in ("+", "-") else ("", word)
        match = [p for p in PROTOCOLS if p.lower() == name.lower()]
        if name.lower() == "all":
            these = set(PROTOCOLS)
        elif name.lower() == "sslv2":  # mod_ssl ignores it with a warning
            continue
        elif match:
            these = {match[0]}
        else:
            raise ValueError(f"unknown protocol {word!r}")
        if sign == "-":
            enabled -= these
        elif sign == "+":
            enabled |= these
        else:
            enabled = set(these)
    return enabled


def audit(ctx: Context) -> list[Finding]:
    layout = next((x for x in LAYOUTS if ctx.exists(x[0])), None)
    if layout is None:
        return []
    main, root, reload = layout
    cfg = Config(server_root=root)
    try:
        _parse(ctx, cfg, main, "", 0)
    except Unreadable as e:
        return [unknown(rule, title, e) for rule, title in _TITLES.items()]
    source = f"{main} and its includes" + ("" if ctx.live else f" (below {ctx.sysroot})")

    def last(name: str, vhost: str = "") -> Directive | None:
        return next((d for d in reversed(cfg.directives)
                     if d.name == name and d.vhost == vhost), None)

    def vhosts(name: str) -> list[Directive]:
        """The server-level value and every <VirtualHost>'s own (its last) value."""
        seen = dict.fromkeys(d.vhost for d in cfg.directives if d.name == name and d.vhost)
        found = [last(name, v) for v in ("", *seen)]
        return [d for d in found if d is not None]

    def fix(wanted: str, bad: list[Directive], absent: bool = False) -> str:
        edits = [f'change {d.where} to "{wanted}"' for d in bad]
        if absent:
            edits.insert(0, f'add "{wanted}" to {main} (outside any <VirtualHost>)')
        return "; ".join(edits) + f", then {reload}"

    def finding(rule: str, ok: bool, found: str, expected: str, remedy: str, *,
                why: str) -> Finding:
        return Finding(rule, _TITLES[rule], ok, found, expected, remedy, why, Status.WARN,
                       source)

    def shown(d: Directive | None, default: str) -> str:
        return f"{d.text} ({d.where})" if d else f"not set (httpd's default: {default})"

    findings: list[Finding] = []
    tokens = last("servertokens")
    value = tokens.args[0].lower() if tokens and tokens.args else "full"
    findings.append(finding(
        "httpd.server_tokens", value in ("prod", "productonly"), shown(tokens, "Full"),
        "ServerTokens Prod", fix("ServerTokens Prod", [tokens] if tokens else [], not tokens),
        why="the Server header otherwise names the exact httpd and OS versions, a shopping list "
        "for anyone matching them against known flaws."))

    signs = [d for d in vhosts("serversignature")
             if not d.args or d.args[0].lower() != "off"]
    findings.append(finding(
        "httpd.server_signature", not signs,
        "; ".join(shown(d, "") for d in signs) or shown(last("serversignature"), "Off"),
        "ServerSignature Off", fix("ServerSignature Off", signs),
        why="error pages otherwise print the server version under every 404."))

    trace = last("traceenable")
    traces = [d for d in vhosts("traceenable") if not d.args or d.args[0].lower() != "off"]
    findings.append(finding(
        "httpd.trace_enable", bool(trace) and not traces,
        "; ".join(shown(d, "") for d in traces) or shown(trace, "On"), "TraceEnable Off",
        fix("TraceEnable Off", traces, absent=not trace),
        why="TRACE echoes requests back, cookies included (cross-site tracing); nothing needs "
        "it."))

    weak: list[tuple[Directive, list[str]]] = []
    broken: list[str] = []
    for d in vhosts("sslprotocol"):
        try:
            allowed = protocols(d.args)
        except ValueError as e:
            broken.append(f"{d.where}: {e}")
            continue
        if allowed & set(WEAK):
            weak.append((d, sorted(allowed & set(WEAK), key=PROTOCOLS.index)))
    title = _TITLES["httpd.ssl_protocol"]
    if broken:
        findings.append(unknown("httpd.ssl_protocol", title, "; ".join(broken)))
    else:
        findings.append(finding(
            "httpd.ssl_protocol", not weak,
            "; ".join(f"{d.text} ({d.where}) allows {', '.join(p)}" for d, p in weak)
            or shown(last("sslprotocol"), "the system-wide crypto policy, TLS 1.2 or later"),
            f"{GOOD_PROTOCOL} (or no SSLProtocol, leaving it to the crypto policy)",
            fix(GOOD_PROTOCOL, [d for d, _ in weak]),
            why="SSLv3, TLS 1.0 and 1.1 have known attacks (POODLE, BEAST) and no client of "
            "this decade needs them."))
    return findings
