"""Dovecot hardening rules (TLS and cleartext logins), judged on the effective configuration
``doveconf`` reports for the audited system's dovecot.conf, globally and per login protocol."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.model import Status
from checks.audit.base import Context, Finding, Rules, Unreadable, Verdict

ORDER = 50  # place in the audit report (steward.audit entry point)

CONF = "/etc/dovecot/dovecot.conf"
SSL_CONF, AUTH_CONF = "/etc/dovecot/conf.d/10-ssl.conf", "/etc/dovecot/conf.d/10-auth.conf"
LOGIN_PROTOCOLS = ("imap", "pop3", "submission", "sieve", "managesieve")
TLS_ORDER = ("ANY", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "LATEST")
# 2.3 setting names and, for Dovecot 2.4, their new names.
V24 = {"disable_plaintext_auth": "auth_allow_cleartext", "ssl_cert": "ssl_server_cert_file",
       "ssl_key": "ssl_server_key_file"}
# Dovecot 2.3 defaults, for when doveconf is missing and the files are parsed.
DEFAULTS = {"ssl": "yes", "ssl_min_protocol": "TLSv1.2", "disable_plaintext_auth": "yes",
            "ssl_cert": "", "ssl_key": "", "protocols": "imap pop3 lmtp"}


@dataclass(frozen=True)
class Config:
    """Setting values by scope: "" is the global one, "imap", "pop3", ... the enabled login
    protocols (whose ``protocol X { }`` blocks may override the global values)."""

    ctx: Context
    scopes: dict[str, dict[str, str]]
    v24: bool
    source: str

    def name(self, setting: str) -> str:
        return V24.get(setting, setting) if self.v24 else setting

    def get(self, setting: str, scope: str = "") -> str:
        name = self.name(setting)
        return self.scopes[scope].get(name, self.scopes[""].get(name, ""))

    def values(self, setting: str) -> dict[str, str]:
        """The setting's value per scope; a protocol listed only when it differs."""
        return {s: self.get(setting, s) for s in self.scopes
                if s == "" or self.get(setting, s) != self.get(setting)}

    def shown(self, setting: str) -> str:
        vals = self.values(setting)
        extra = ", ".join(f"{s}: {v}" for s, v in vals.items() if s)
        return f"{self.name(setting)} = {vals['']}" + (f" ({extra})" if extra else "")

    def fix(self, default_file: str, **settings: str) -> str:
        """Where to set each setting: the lines that set it now, else the usual file."""
        texts = {}
        for f in (CONF, *self.ctx.glob("/etc/dovecot/conf.d/*.conf"), "/etc/dovecot/local.conf"):
            try:
                texts[f] = self.ctx.text(f)
            except Unreadable:
                continue
        steps = []
        for setting, value in settings.items():
            name = self.name(setting)
            pattern = re.compile(rf"^\s*{re.escape(name)}\s*=")
            hits = [f"{path} line {n}" for path, text in texts.items()
                    for n, line in enumerate(text.splitlines(), 1) if pattern.match(line)]
            steps.append(f"set `{name} = {value}` in {', '.join(hits) or default_file}")
        return " and ".join(steps) + ", then systemctl reload dovecot"


# -- reading the configuration -------------------------------------------------------------

def parse_settings(text: str) -> dict[str, str]:
    """The top-level ``name = value`` lines of doveconf output (sections skipped)."""
    out, depth = {}, 0
    for line in text.splitlines():
        s = line.strip()
        if s.endswith("{"):
            depth += 1
        elif s == "}":
            depth -= 1
        elif depth == 0 and "=" in s and not s.startswith("#"):
            name, _, value = s.partition("=")
            out[name.strip()] = value.strip()
    return out


def _protocols(top: dict[str, str]) -> list[str]:
    return [p for p in top.get("protocols", "").split() if p in LOGIN_PROTOCOLS]


def load(ctx: Context) -> Config:
    ctx.read(CONF)  # doveconf -c on a directory reports the defaults, without complaint
    doveconf = ctx.tool("doveconf")
    if doveconf is None:
        return parse_files(ctx)
    base = [doveconf, "-c", str(ctx.path(CONF))]
    every = parse_settings(ctx.run([*base, "-a"]).stdout)
    v24 = "auth_allow_cleartext" in every
    names = [V24.get(n, n) if v24 else n for n in DEFAULTS]
    scopes = {"": parse_settings(ctx.run([*base, *names]).stdout)}
    for p in _protocols(scopes[""]):
        scopes[p] = parse_settings(ctx.run([*base, "-f", f"protocol={p}", *names]).stdout)
    return Config(ctx, scopes, v24, " ".join(base))


def parse_files(ctx: Context) -> Config:
    """Fallback when doveconf is not installed: ``name = value`` lines, ``protocol X { }``
    blocks and ``!include``/``!include_try`` (relative to the including file) only."""
    scopes: dict[str, dict[str, str]] = {"": dict(DEFAULTS)}

    def read(path: str, required: bool) -> None:
        text = ctx.read(path)
        if text is None:
            if required:
                raise Unreadable(str(ctx.path(path)), "no such file")
            return
        stack: list[str] = []
        for n, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if s.startswith("!include"):
                kind, _, pattern = s.partition(" ")
                pattern = pattern.strip().strip('"')
                full = pattern if pattern.startswith("/") else \
                    f"{path.rsplit('/', 1)[0]}/{pattern}"
                for m in ctx.glob(full) if "*" in full else [full]:
                    read(m, kind == "!include")
            elif s.endswith("{"):
                words = s[:-1].split()
                stack.append(words[1] if words[:1] == ["protocol"] and len(words) > 1 else "-")
            elif s == "}":
                if not stack:
                    raise Unreadable(f"{ctx.path(path)} line {n}", "unexpected '}'")
                stack.pop()
            elif "=" in s:
                name, _, value = (x.strip() for x in s.partition("="))
                scope = stack[-1] if stack else ""
                if scope != "-" and all(x != "-" for x in stack):
                    here = scopes.setdefault(scope, {})
                    here[name] = value.replace(f"${name}", here.get(name, ""))
            else:
                raise Unreadable(f"{ctx.path(path)} line {n}", "expecting '=' or '{'")
        if stack:
            raise Unreadable(str(ctx.path(path)), "missing '}'")

    read(CONF, True)
    enabled = _protocols(scopes[""])
    return Config(ctx, {s: v for s, v in scopes.items() if s == "" or s in enabled}, False,
                  f"{ctx.path(CONF)} (doveconf not installed)")


# -- the rules: each returns a Verdict; its docstring is the rationale ----------------------

RULES: Rules[Config] = Rules()
rule = RULES.rule


@rule("dovecot.ssl", "IMAP/POP3 require TLS", Status.CRIT)
def ssl(cfg: Config) -> Verdict:
    """With ssl = yes clients may still log in and read mail over cleartext IMAP (143) and POP3
    (110); ssl = required refuses anything but TLS. ssl = no sends everything in cleartext."""
    levels = set(cfg.values("ssl").values())
    severity = Status.CRIT if "no" in levels else Status.WARN
    return Verdict(levels == {"required"}, cfg.shown("ssl"), "ssl = required",
                   cfg.fix(SSL_CONF, ssl="required"), severity)


@rule("dovecot.cleartext_auth", "no password logins without TLS", Status.CRIT)
def cleartext_auth(cfg: Config) -> Verdict:
    """Allowing cleartext authentication without TLS lets passwords cross the network
    readable. (Dovecot 2.3: disable_plaintext_auth = yes; 2.4: auth_allow_cleartext = no.)"""
    want = "no" if cfg.v24 else "yes"
    values = cfg.values("disable_plaintext_auth")
    bad = [s for s, v in values.items() if v.lower() != want]
    tls_forced = set(cfg.values("ssl").values()) == {"required"}
    return Verdict(not bad, cfg.shown("disable_plaintext_auth"),
                   f"{cfg.name('disable_plaintext_auth')} = {want}",
                   cfg.fix(AUTH_CONF, disable_plaintext_auth=want),
                   Status.WARN if tls_forced else Status.CRIT)


def tls_rank(value: str) -> int:
    """Position in TLS_ORDER; -1 for a value Dovecot does not know (it then refuses TLS)."""
    lowered = [p.lower() for p in TLS_ORDER]
    return lowered.index(value.lower()) if value.lower() in lowered else -1


@rule("dovecot.ssl_min_protocol", "only TLS 1.2 or later")
def ssl_min_protocol(cfg: Config) -> Verdict:
    """SSLv3 is broken and TLS 1.0/1.1 deprecated (RFC 8996); EL9's DEFAULT crypto policy
    refuses them too, but the LEGACY policy does not."""
    fix = cfg.fix(SSL_CONF, ssl_min_protocol="TLSv1.2")
    expected = "ssl_min_protocol = TLSv1.2 (or TLSv1.3)"
    ssl_on = [s for s in cfg.scopes if cfg.get("ssl", s) != "no"]
    if not ssl_on:
        return Verdict(True, "ssl = no: no TLS offered (see dovecot.ssl)", expected, fix)
    worst = min(tls_rank(cfg.get("ssl_min_protocol", s)) for s in ssl_on)
    return Verdict(None if worst < 0 else worst >= TLS_ORDER.index("TLSv1.2"),
                   cfg.shown("ssl_min_protocol") + (": not a protocol" if worst < 0 else ""),
                   expected, fix, Status.CRIT if worst < TLS_ORDER.index("TLSv1") else None)


@rule("dovecot.ssl_cert", "TLS certificate and key configured", Status.CRIT)
def ssl_cert(cfg: Config) -> Verdict:
    """With TLS on but no readable certificate or key, Dovecot refuses TLS and IMAPS/POP3S
    logins fail."""
    pem = "" if cfg.v24 else "<"
    fix = cfg.fix(SSL_CONF, ssl_cert=f"{pem}/etc/pki/dovecot/certs/dovecot.pem",
                  ssl_key=f"{pem}/etc/pki/dovecot/private/dovecot.pem")
    if set(cfg.values("ssl").values()) == {"no"}:
        return Verdict(True, "ssl = no: no certificate needed (see dovecot.ssl)",
                       "a certificate and key when ssl is on", fix)
    problems = []
    for setting in ("ssl_cert", "ssl_key"):
        for scope, value in cfg.values(setting).items():
            path = value[1:].strip() if value.startswith("<") else value
            where = f" for {scope}" if scope else ""
            if not value:
                problems.append(f"{cfg.name(setting)} not set{where}")
            elif path.startswith("/") and not cfg.ctx.real_path(path).is_file():
                problems.append(f"{cfg.name(setting)}{where}: {path} missing")
    return Verdict(not problems, "; ".join(problems) or f"{cfg.shown('ssl_cert')}; "
                   f"{cfg.shown('ssl_key')}", "a certificate and key file that exist", fix)


def audit(ctx: Context) -> list[Finding]:
    if not ctx.exists(CONF):
        return []
    return RULES.audit(ctx, load)
