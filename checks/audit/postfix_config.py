"""Postfix's effective configuration as the postfix rules judge it: ``postconf``'s view of the
audited system's /etc/postfix (main.cf values, each master.cf service's ``-o`` overrides), or
main.cf and master.cf read as text when postconf is not installed; and the postconf commands
that change it."""

from __future__ import annotations

import re
import shlex
from typing import NamedTuple

from checks.audit.base import Context, Unreadable

MAIN = "/etc/postfix/main.cf"
PORT25, PORT587, PORT465 = ("smtp", "25"), ("submission", "587"), ("submissions", "smtps", "465")
RESTRICTION_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                     "smtpd_sender_restrictions", "smtpd_relay_restrictions",
                     "smtpd_recipient_restrictions", "smtpd_data_restrictions")
# The parameters read, with Postfix 3.5's (EL9) defaults for when postconf is missing.
DEFAULTS = {
    "disable_vrfy_command": "no", "smtpd_helo_required": "no", "smtpd_delay_reject": "yes",
    **dict.fromkeys(RESTRICTION_LISTS, ""),
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
                                "defer_unauth_destination",
    "smtpd_banner": "$myhostname ESMTP $mail_name", "mail_name": "Postfix",
    "smtpd_tls_security_level": "", "smtpd_use_tls": "no", "smtpd_enforce_tls": "no",
    "smtpd_tls_cert_file": "", "smtpd_tls_key_file": "$smtpd_tls_cert_file",
    "smtpd_tls_chain_files": "", "smtpd_tls_protocols": "!SSLv2, !SSLv3",
    "smtpd_tls_mandatory_protocols": "!SSLv2, !SSLv3", "smtpd_tls_auth_only": "no",
    "smtpd_sasl_auth_enable": "no", "smtpd_tls_wrappermode": "no",
    "mynetworks": "127.0.0.0/8 [::1]/128", "alias_maps": "hash:/etc/aliases",
}


class Service(NamedTuple):
    """One master.cf entry and its ``-o`` overrides."""

    name: str
    type: str
    command: str
    overrides: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"


def command(settings: dict[str, str], svc: Service | None = None) -> str:
    """The postconf command that sets ``settings`` in main.cf, or on master.cf's ``svc``.
    ``-P`` takes no whitespace: lists lose it, other values move to main.cf."""
    if svc is None:
        return "postconf -e " + " ".join(shlex.quote(f"{k}={v}") for k, v in settings.items())
    compact = {k: re.sub(r",\s+", ",", v) for k, v in settings.items()}
    spaced = {k: settings[k] for k, v in compact.items() if re.search(r"\s", v)}
    here = [f"{svc.key}/{k}={v}" for k, v in compact.items() if k not in spaced]
    steps = ["postconf -P " + " ".join(map(shlex.quote, here))] if here else []
    if spaced:
        steps += ["postconf -PX " + " ".join(shlex.quote(f"{svc.key}/{k}") for k in spaced),
                  command(spaced)]
    return " && ".join(steps)


def reload(*commands: str) -> str:
    return " && ".join((*commands, "systemctl reload postfix"))


def tokens(value: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", value) if t and t not in "{}"]


def reachable(items: list[str]) -> list[str]:
    """The restrictions that can take effect: those before an unconditional ``permit``."""
    return items[:items.index("permit")] if "permit" in items else items


class Config(NamedTuple):
    ctx: Context
    main: dict[str, str]  # effective, $-expanded main.cf values (defaults included)
    services: list[Service]
    source: str

    def get(self, param: str, svc: Service | None = None) -> str:
        if svc is not None and param in svc.overrides:
            return svc.overrides[param]
        return self.main.get(param, DEFAULTS.get(param, ""))

    def shown(self, param: str, svc: Service | None = None) -> str:
        return f"{param} = {self.get(param, svc)}"

    def yes(self, param: str, svc: Service | None = None) -> bool:
        return self.get(param, svc).strip().lower() in ("yes", "true", "1")

    def fix(self, svc: Service | None, **settings: str) -> str:
        """Set ``settings`` where they take effect for ``svc``: its overrides or main.cf."""
        here = svc if svc is not None and any(k in svc.overrides for k in settings) else None
        return reload(command(settings, here))

    def smtpd(self, *ports: str) -> list[Service]:
        """The smtpd services listening on ``ports`` ("smtp", "587"; "[::1]:587" counts)."""
        inet = [s for s in self.services if s.type == "inet" and s.name.split(":")[-1] in ports]
        return [s for s in inet if s.command == "smtpd"] + [  # behind postscreen, the pass one
            s for s in self.services if s.type == "pass" and s.command == "smtpd"
            and any(i.command == "postscreen" for i in inet)]

    @property
    def port25(self) -> Service | None:
        return next(iter(self.smtpd(*PORT25)), None)

    @property
    def listeners(self) -> list[Service]:
        return self.smtpd(*PORT25, *PORT587, *PORT465)

    def level(self, svc: Service | None) -> str:
        level = self.get("smtpd_tls_security_level", svc).strip().lower()
        return level or ("encrypt" if self.yes("smtpd_enforce_tls", svc) else
                         "may" if self.yes("smtpd_use_tls", svc) else "none")


def logical_lines(text: str) -> list[str]:
    """Postfix's file syntax: comments and blank lines dropped, indented lines continue."""
    logical: list[str] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            if line[0].isspace() and logical:
                logical[-1] += " " + line.strip()
            else:
                logical.append(line.strip())
    return logical


def parse_services(text: str, source: str) -> list[Service]:
    """master.cf entries from ``postconf -M`` output or from the file itself."""
    out = []
    for line in logical_lines(text):
        fields = line.split()
        if len(fields) < 8:
            raise Unreadable(source, f"bad field count: {line!r}")
        opts = [o.partition("=") for o, prev in zip(fields[9:], fields[8:]) if prev == "-o"]
        out.append(Service(fields[0], fields[1], fields[7], {k: v for k, eq, v in opts if eq}))
    return out


def expand(value: str, raw: dict[str, str], depth: int = 0) -> str:
    def one(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        return expand(raw[name], raw, depth + 1) if name in raw and depth < 10 else m[0]
    return re.sub(r"\$(?:\{(\w+)\}|(\w+))", one, value)


def load(ctx: Context) -> Config:
    postconf = ctx.tool("postconf")
    if postconf is None:  # fallback: main.cf and master.cf read as text
        raw = dict(DEFAULTS)
        for line in logical_lines(ctx.read(MAIN) or ""):
            name, eq, value = line.partition("=")
            if not eq:
                raise Unreadable(str(ctx.path(MAIN)), f"missing '=' in {line!r}")
            raw[name.strip()] = value.strip()
        master = "/etc/postfix/master.cf"
        services = parse_services(ctx.read(master) or "", str(ctx.path(master)))
        for s in services:
            s.overrides.update({k: expand(v, raw) for k, v in s.overrides.items()})
        return Config(ctx, {k: expand(v, raw) for k, v in raw.items()}, services,
                      f"{ctx.path(MAIN)} and master.cf (postconf not installed)")
    base = [postconf, "-c", str(ctx.path("/etc/postfix"))]
    pairs = [(n.strip(), v.strip()) for line in ctx.run([*base, "-x", *DEFAULTS]).stdout
             .splitlines() for n, _, v in [line.partition("=")]]
    services = parse_services(ctx.run([*base, "-M"]).stdout, " ".join([*base, "-M"]))
    by_key = {s.key: s for s in services}
    for line in ctx.run([*base, "-P", "-x"]).stdout.splitlines():
        name, _, value = line.partition("=")  # "smtp/inet/name = value" or "... ="
        svc, _, param = name.strip().rpartition("/")
        if svc in by_key:
            by_key[svc].overrides[param] = value.strip()
    return Config(ctx, dict(pairs), services, " ".join(base))
