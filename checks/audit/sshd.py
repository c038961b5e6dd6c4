"""sshd hardening: root login, password and empty-password logins, X11 forwarding, judged on
sshd's effective configuration as ``sshd -T`` prints it for the audited system's files."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown

ORDER = 30  # place in the audit report (steward.audit entry point)

CONFIG = "/etc/ssh/sshd_config"
DROPIN_DIR = "/etc/ssh/sshd_config.d"
# sshd keeps the FIRST value it reads, and EL9's sshd_config includes the drop-ins on its first
# line, in name order. 50-steward.conf would lose to EL9's own 50-redhat.conf (X11Forwarding
# yes) and to cloud-init's 50-cloud-init.conf (PasswordAuthentication yes): 01- wins.
DROPIN = f"{DROPIN_DIR}/01-steward.conf"
RELOAD = "sshd -t && systemctl reload sshd"
MAX_DEPTH = 16  # sshd's own limit on nested Include
ROOT_LOGIN = ("no", "forced-commands-only", "prohibit-password", "yes")  # strictest first
_INCLUDE = re.compile(r"^\s*include(?:\s*=\s*|\s+)(.*)$", re.I)
_RULES = {  # rule -> title, for UNKNOWN findings when sshd -T cannot be run
    "sshd.root_login": "sshd root login limited",
    "sshd.password_auth": "sshd password logins off",
    "sshd.kbd_interactive": "sshd keyboard-interactive (PAM password) logins off",
    "sshd.empty_passwords": "sshd refuses empty passwords",
    "sshd.x11_forwarding": "sshd X11 forwarding off",
}


def _mirror(ctx: Context, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Copy sshd_config and what it includes into ``tmp``, each Include pointing at the copies.

    EL9's ``Include /etc/ssh/sshd_config.d/*.conf`` is absolute: sshd -f on the sysroot's file
    would read the HOST's drop-ins. Resolving the includes ourselves (below the sysroot, relative
    ones against /etc/ssh, globs sorted) and keeping every line in place lets sshd still parse
    everything itself, with its own Match scoping, and its messages map back line for line."""
    names: dict[str, str] = {}  # copy -> audited path

    def copy(path: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise Unreadable(path, "Include nested too deeply")
        lines = ctx.text(path).splitlines()
        for i, line in enumerate(lines):
            m = _INCLUDE.match(line)
            if not m:
                continue
            copies = [copy(p, depth + 1) for arg in m[1].split()
                      for p in ctx.glob(_absolute(arg.strip('"')))]
            # An Include matching nothing is no error to sshd either.
            lines[i] = f"Include {' '.join(copies)}" if copies else f"# {line}"
        dest = tmp / f"{len(names)}-{os.path.basename(path)}"
        dest.write_text("\n".join(lines) + "\n")
        names[str(dest)] = path
        return str(dest)

    return Path(copy(CONFIG, 0)), names


def _absolute(arg: str) -> str:
    return arg if arg.startswith("/") else f"/etc/ssh/{arg}"


def effective(ctx: Context) -> dict[str, str]:
    """``sshd -T`` for the audited system's configuration: lower-case keyword -> value (the
    first value of keywords that repeat)."""
    sshd, keygen = ctx.tool("sshd"), ctx.tool("ssh-keygen")
    if not sshd or not keygen:
        raise Unreadable("sshd -T", "sshd or ssh-keygen is not installed on this host")
    with tempfile.TemporaryDirectory(prefix="steward-sshd-") as d:
        tmp = Path(d)
        main, names = _mirror(ctx, tmp)
        # sshd -T refuses to run without a host key; one made for the occasion keeps it away
        # from the keys of the host and of the audited system (none of the rules judge keys).
        key = tmp / "hostkey"
        ctx.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "steward", "-f", str(key)])
        try:
            out = ctx.run([sshd, "-T", "-f", str(main), "-o", f"HostKey={key}"]).stdout
        except Unreadable as e:
            raise Unreadable(f"sshd -T -f {CONFIG}", _unmap(e.problem, names)) from None
    values: dict[str, str] = {}
    for line in out.splitlines():
        word, _, value = line.partition(" ")
        values.setdefault(word.lower(), value.strip())
    return values


def _unmap(text: str, names: Mapping[str, str]) -> str:
    for copy, path in names.items():
        text = text.replace(copy, path)
    return text


def _dropins_first(ctx: Context) -> bool:
    """Whether sshd_config includes the drop-in directory before it sets anything itself."""
    text = ctx.read(CONFIG) or ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        m = _INCLUDE.match(line)
        return m is not None and any(_absolute(a.strip('"')).startswith(DROPIN_DIR + "/")
                               for a in m[1].split())
    return False


def audit(ctx: Context) -> list[Finding]:
    if not ctx.exists(CONFIG):
        return []
    try:
        cfg = effective(ctx)
        first = _dropins_first(ctx)
    except Unreadable as e:
        return [unknown(rule, title, e) for rule, title in _RULES.items()]
    source = f"sshd -T -f {CONFIG}" + ("" if ctx.live else f" (files below {ctx.sysroot})")
    where = (f"add the line \"{{}}\" to {DROPIN} (sshd keeps the first value it reads; "
             "sshd_config includes that directory first)" if first else
             f"set \"{{}}\" in {CONFIG} above any other line setting it and above any Match "
             "block")

    def rule(rule: str, ok: bool, found: str, line: str, *, why: str,
             severity: Status = Status.WARN, expected: str = "") -> Finding:
        return Finding(rule, _RULES[rule], ok, found, expected or line,
                       f"{where.format(line)}, then {RELOAD}", why, severity, source)

    options = ctx.options
    root = cfg.get("permitrootlogin", "yes").replace("without-password", "prohibit-password")
    allowed = ROOT_LOGIN.index(options.ssh_root_login)
    rank = ROOT_LOGIN.index(root) if root in ROOT_LOGIN else len(ROOT_LOGIN)
    passwords = cfg.get("passwordauthentication", "yes") == "yes"
    methods = cfg.get("authenticationmethods", "any")
    # AuthenticationMethods "publickey,password" makes a password a second factor only.
    key_first = methods != "any" and all("publickey" in chain.split(",")
                                         for chain in methods.split())
    why_key = f" (but AuthenticationMethods {methods} demands a key too)" if key_first else ""
    kbd = cfg.get("kbdinteractiveauthentication",
                  cfg.get("challengeresponseauthentication", "yes")) == "yes"
    pam = cfg.get("usepam", "no") == "yes"
    return [
        rule("sshd.root_login", rank <= allowed, f"PermitRootLogin {root}",
             f"PermitRootLogin {options.ssh_root_login}",
             why="root is every attacker's first guess; a key (or nothing) should be needed.",
             severity=Status.CRIT if root == "yes" and passwords and not key_first else Status.WARN,
             expected=f"PermitRootLogin {options.ssh_root_login} or stricter "
                      "(ssh_root_login in [checks.audit])"),
        rule("sshd.password_auth", not passwords or options.ssh_passwords or key_first,
             f"PasswordAuthentication {'yes' if passwords else 'no'}{why_key}",
             "PasswordAuthentication no",
             why="password logins invite brute force from the whole internet; keys do not "
             "(ssh_passwords = true in [checks.audit] allows them)."),
        rule("sshd.kbd_interactive",
             not (kbd and pam) or options.ssh_passwords or key_first,
             f"KbdInteractiveAuthentication {'yes' if kbd else 'no'} with UsePAM "
             f"{'yes' if pam else 'no'}{why_key}", "KbdInteractiveAuthentication no",
             why="with UsePAM yes, keyboard-interactive asks PAM for the password: password "
             "logins stay open even with PasswordAuthentication no."),
        rule("sshd.empty_passwords", cfg.get("permitemptypasswords", "no") == "no",
             f"PermitEmptyPasswords {cfg.get('permitemptypasswords', 'no')}",
             "PermitEmptyPasswords no",
             why="an account without a password would be open to anyone.",
             severity=Status.CRIT),
        rule("sshd.x11_forwarding", cfg.get("x11forwarding", "no") == "no",
             f"X11Forwarding {cfg.get('x11forwarding', 'no')}", "X11Forwarding no",
             why="a server appliance has no use for X11; forwarding exposes the client's display "
             "to whoever controls the server."),
    ]
