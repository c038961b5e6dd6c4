"""System-wide rules: the crypto policy, what listens on the network (live only), secrets
readable by root and their daemons only, and pending security updates."""

from __future__ import annotations

import glob
import ipaddress
import json
import re
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown

ORDER = 80  # place in the audit report (steward.audit entry point)

# The appliance's public ports: ssh, smtp/smtps/submission, imaps/pop3s, http(s), dns.
# DHCP clients (68/udp, 546/udp) bind the wildcard address to receive their leases.
EXPECTED = ("22/tcp", "25/tcp", "465/tcp", "587/tcp", "993/tcp", "995/tcp", "80/tcp",
            "443/tcp", "53/tcp", "53/udp", "68/udp", "546/udp")
PLAINTEXT = {  # (port, proto): (name, severity, why)
    (23, "tcp"): ("telnet", Status.CRIT, "telnet sends passwords and sessions in the clear"),
    (21, "tcp"): ("ftp", Status.CRIT, "FTP sends passwords and files in the clear"),
    (512, "tcp"): ("rexec", Status.CRIT, "rexec sends passwords in the clear"),
    (513, "tcp"): ("rlogin", Status.CRIT, "rlogin trusts host names and sends in the clear"),
    (514, "tcp"): ("rsh", Status.CRIT, "rsh trusts host names and sends in the clear"),
    (69, "udp"): ("tftp", Status.CRIT, "TFTP serves files to anyone, without a password"),
    (143, "tcp"): ("imap", Status.WARN, "IMAP on 143 carries passwords in the clear unless "
                   "Dovecot has ssl = required, which makes STARTTLS mandatory"),
    (110, "tcp"): ("pop3", Status.WARN, "POP3 on 110 carries passwords in the clear unless "
                   "Dovecot has ssl = required, which makes STARTTLS mandatory"),
}
# Secrets: (rule, title, globs, owners allowed besides root, group may read)
SECRETS = (
    ("shadow", "Password hashes readable by root only",
     ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-"), (), False),
    ("dkim_keys", "DKIM private keys readable by their signer only",
     ("/etc/opendkim/keys/**/*.private", "/etc/pki/dkim/*", "/var/lib/rspamd/dkim/*.key"),
     ("opendkim", "_rspamd", "rspamd"), True),
    ("tls_keys", "TLS private keys readable by root only",
     ("/etc/pki/tls/private/*", "/etc/letsencrypt/archive/*/privkey*.pem"), (), True),
    ("steward_config", "steward's configuration readable by root only", ("/etc/steward/**",),
     (), True),
)
PENDING = "/var/lib/steward/patch/pending.json"


def audit(ctx: Context) -> list[Finding]:
    findings: list[Finding] = []
    for judge in (_crypto_policy, _listening, _secrets, _security_updates):
        findings.extend(judge(ctx))
    return findings


def _crypto_policy(ctx: Context) -> list[Finding]:
    title = "System crypto policy is not LEGACY"
    try:
        for path in ("/etc/crypto-policies/state/current", "/etc/crypto-policies/config"):
            text = ctx.read(path)
            if text is None:
                continue
            lines = [x.strip() for x in text.splitlines() if x.strip() and x[0] != "#"]
            if not lines:
                raise Unreadable(str(ctx.path(path)), "no policy name in it")
            base, *modules = lines[0].split(":")
            weak = base.upper() == "LEGACY" or "SHA1" in (m.upper() for m in modules)
            return [Finding(
                "system.crypto_policy", title, not weak, f"policy {lines[0]}",
                "DEFAULT, FUTURE or FIPS (no SHA1 module)",
                "update-crypto-policies --set DEFAULT, then restart the services (or reboot)",
                "LEGACY and the SHA1 module re-enable SHA-1 signatures, TLS 1.0/1.1 and small "
                "keys for every program on the system.", source=path)]
    except Unreadable as e:
        return [unknown("system.crypto_policy", title, e)]
    return []  # not an EL system: no system-wide crypto policy to judge


@dataclass(frozen=True)
class Listener:
    port: int
    proto: str
    address: str
    pid: int | None
    program: str | None
    loopback: bool = False


# Login services that have no business running at all, not even on loopback.
LOGIN = frozenset(k for k, (_, severity, _) in PLAINTEXT.items() if severity is Status.CRIT)


def listeners(ctx: Context) -> list[Listener]:
    """Sockets that accept connections: TCP in LISTEN, UDP bound without a peer; not UDP in
    the ephemeral range (clients' sockets, e.g. a resolver's). Loopback ones are marked."""
    try:
        low, high = (int(x) for x in (ctx.read("/proc/sys/net/ipv4/ip_local_port_range")
                                      or "32768 60999").split())
    except (Unreadable, ValueError):
        low, high = 32768, 60999
    out = []
    for c in psutil.net_connections(kind="inet"):
        tcp = c.type == socket.SOCK_STREAM
        if (tcp and c.status != psutil.CONN_LISTEN) or (not tcp and c.raddr) or not c.laddr \
                or (not tcp and low <= c.laddr.port <= high):
            continue
        out.append(Listener(c.laddr.port, "tcp" if tcp else "udp", c.laddr.ip, c.pid,
                            _program(c.pid), _loopback(c.laddr.ip)))
    return out


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", maxsplit=1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def _program(pid: int | None) -> str | None:
    try:
        return psutil.Process(pid).name() if pid else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _unit(pid: int | None) -> str | None:
    """The systemd unit a process runs in, from its cgroup (None outside a service)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text() if pid else ""
    except OSError:
        return None
    m = re.search(r"/([^/\s]+\.service)\s*$", text, re.M)
    return m[1] if m else None


def _listening(ctx: Context) -> list[Finding]:
    if not ctx.live:
        return []  # sockets exist only on the running system
    allow = [*EXPECTED, *ctx.options.allow_ports]
    groups: dict[tuple[int, str], list[Listener]] = {}
    local: dict[tuple[int, str], list[Listener]] = {}  # plaintext login services on loopback
    try:
        for s in listeners(ctx):
            if not s.loopback:
                groups.setdefault((s.port, s.proto), []).append(s)
            elif (s.port, s.proto) in LOGIN:
                local.setdefault((s.port, s.proto), []).append(s)
    except psutil.Error as e:  # e.g. AccessDenied when not run as root
        return [unknown("system.listen", "Only the appliance's ports open to the network",
                        f"listing sockets (psutil): {type(e).__name__}: {e}")]
    plain, odd = [], []
    for (port, proto), socks in sorted(groups.items()):
        where = ", ".join(sorted({s.address for s in socks}))
        progs = ", ".join(sorted({f"{s.program or '?'} (pid {s.pid})" if s.pid else "?"
                                  for s in socks}))
        unit = next((u for u in map(_unit, (s.pid for s in socks)) if u), None)
        stop = f"systemctl disable --now {unit}" if unit else "stop and disable the program"
        found = f"{port}/{proto} on {where} by {progs}"
        if (port, proto) in PLAINTEXT:
            name, severity, why = PLAINTEXT[(port, proto)]
            plain.append(Finding(
                f"system.plaintext.{name}", f"No plaintext {name} on the network", False, found,
                f"{name} not listening on network addresses", f"{stop}; "
                + ("or set ssl = required in /etc/dovecot/conf.d/10-ssl.conf and keep "
                   "clients on 993/995" if severity is Status.WARN else "use ssh/sftp instead"),
                why + ".", severity))
        elif not any(_in_range(port, proto, spec) for spec in allow):
            odd.append(Finding(
                f"system.listen.{port}-{proto}", f"Port {port}/{proto} is not open to the "
                "network", False, found, "only the appliance's ports (and allow_ports)",
                f"{stop}; or, if it must be reachable, add \"{port}/{proto}\" to allow_ports "
                "in [checks.audit]", "Every service listening on the network is attack "
                "surface, and the firewall is the only thing in front of it."))
    for (port, proto), socks in sorted(local.items()):
        if (port, proto) in groups:
            continue  # already reported, open to the network
        name, _, why = PLAINTEXT[(port, proto)]
        unit = next((u for u in map(_unit, (s.pid for s in socks)) if u), None)
        stop = f"systemctl disable --now {unit}" if unit else "stop and disable the program"
        plain.append(Finding(
            f"system.plaintext.{name}", f"No plaintext {name} on the network", False,
            f"{port}/{proto} on {', '.join(sorted({s.address for s in socks}))} by "
            + ", ".join(sorted({f"{s.program or '?'} (pid {s.pid})" if s.pid else "?"
                                for s in socks})) + " (loopback only)",
            f"{name} not running", f"{stop}; use ssh/sftp instead",
            why + "; on loopback it is not reachable from the network, but any local user or "
            "a forwarded port reaches it, and nothing on an appliance needs it."))
    ok = [] if plain else [Finding("system.plaintext", "No plaintext login services on the "
                                   "network", True, "none listening", "none", "")]
    if not odd:
        ok.append(Finding("system.listen", "Only the appliance's ports open to the network",
                          True, f"{len(groups)} ports on network addresses, all expected",
                          "only the appliance's ports (and allow_ports)", ""))
    return plain + odd + ok


def _in_range(port: int, proto: str, spec: str) -> bool:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?/(\w+)", spec)
    return m is not None and m[3] == proto and int(m[1]) <= port <= int(m[2] or m[1])


def _names(ctx: Context, path: str) -> dict[int, str]:
    """uid/gid -> name from the audited system's passwd/group (not the host's)."""
    try:
        text = ctx.read(path) or ""
    except Unreadable:
        text = ""
    rows = (line.split(":") for line in text.splitlines())
    return {0: "root", **{int(r[2]): r[0] for r in rows if len(r) > 2 and r[2].isdigit()}}


def _keytable_keys(ctx: Context) -> list[str]:
    """Key files named by OpenDKIM's KeyTable ("id domain:selector:/path")."""
    text = ctx.read("/etc/opendkim/KeyTable") or ""
    fields = (line.split(None, 1)[1].split(":", 2) for line in text.splitlines()
              if len(line.split(None, 1)) == 2 and not line.startswith("#"))
    return [f[2].strip() for f in fields if len(f) == 3 and f[2].strip().startswith("/")]


def _secrets(ctx: Context) -> list[Finding]:
    users, groups = _names(ctx, "/etc/passwd"), _names(ctx, "/etc/group")
    out = []
    for rule, title, patterns, owners, group_read in (
            *SECRETS, ("secret_files", "Site secrets readable by root only",
                       ctx.options.secret_files, (), True)):
        try:
            extra = _keytable_keys(ctx) if rule == "dkim_keys" else []
            files = _expand(ctx, [*patterns, *extra])
            problems = [p for f in files for p in _judge_file(
                ctx, f, users=users, groups=groups, owners=("root", *owners),
                group_read=group_read)]
        except Unreadable as e:
            out.append(unknown(f"system.{rule}", title, e, severity=Status.CRIT))
            continue
        if not files:
            continue
        crit = any(sev is Status.CRIT for sev, _, _ in problems)
        fine = f"{len(files)} file{'s' * (len(files) > 1)}, modes safe"
        out.append(Finding(
            f"system.{rule}", title, not problems,
            "; ".join(text for _, text, _ in problems) or fine,
            "no access for others, no group write" + ("" if group_read else
                                                      ", group read only for shadow"),
            " && ".join(dict.fromkeys(fix for _, _, fix in problems)),
            "A secret that other local users can read (a web application, a compromised "
            "daemon) gives away passwords or lets them sign or decrypt as this server.",
            Status.CRIT if crit else Status.WARN, ", ".join(patterns)))
    return out


def _expand(ctx: Context, patterns: Iterable[str]) -> list[str]:
    """Absolute paths of the audited system matching ``patterns``; a plain path that is a
    directory is Unreadable (a file was expected), directories matched by globs are skipped."""
    found: dict[str, None] = {}
    for pattern in patterns:
        for hit in ctx.glob(pattern, recursive=True):
            if ctx.real_path(hit).is_dir():
                if not glob.has_magic(pattern):
                    raise Unreadable(str(ctx.path(hit)), "a directory, where a file was expected")
                continue
            found[hit] = None
    return list(found)


def _judge_file(ctx: Context, path: str, *, users: dict[int, str], groups: dict[int, str],
                owners: tuple[str, ...], group_read: bool) -> list[tuple[Status, str, str]]:
    """(severity, what is wrong, fix) for each problem with one secret file."""
    try:
        st = ctx.real_path(path).stat()
    except FileNotFoundError:
        return []  # a dangling link: nothing to read
    except OSError as e:
        raise Unreadable(str(ctx.path(path)), e.strerror or str(e)) from None
    mode, owner = stat.S_IMODE(st.st_mode), users.get(st.st_uid, str(st.st_uid))
    group = groups.get(st.st_gid, str(st.st_gid))
    shown = f"{path} {mode:04o} {owner}:{group}"
    out: list[tuple[Status, str, str]] = []
    if mode & 0o007:
        shut = _closed_parent(ctx, path)
        out.append((Status.WARN if shut else Status.CRIT,
                    f"{shown} is accessible to everyone" + (
                        f" (only the directory {shut} keeps them out)" if shut else ""),
                    f"chmod o-rwx {path}"))
    if mode & 0o020:
        out.append((Status.WARN, f"{shown} is group-writable", f"chmod g-w {path}"))
    if mode & 0o040 and not group_read and group not in ("root", "shadow"):
        out.append((Status.CRIT, f"{shown} is readable by group {group}",
                    f"chgrp root {path} && chmod 0000 {path}"))
    if owner not in owners:
        out.append((Status.WARN, f"{shown} is owned by {owner}", f"chown root {path}"))
    return out


def _closed_parent(ctx: Context, path: str) -> str | None:
    """A directory above ``path`` that others cannot enter, if any (not "/": that is the
    sysroot's own directory when auditing an image)."""
    for parent in list(Path(path).parents)[:-1]:  # Python 3.9's parents takes no slice
        try:
            if not ctx.real_path(str(parent)).stat().st_mode & 0o001:
                return str(parent)
        except (OSError, Unreadable):
            continue
    return None


def _security_updates(ctx: Context) -> list[Finding]:
    """What the ``updates`` check (under steward run) last found, from PENDING: {"security":
    N, "checked": epoch, ...} (patch.pending.write_state); no file there, no finding."""
    title = "No pending security updates"
    try:
        text = ctx.read(PENDING)
        if text is None:
            return []
        try:
            state = json.loads(text)
            count, checked = int(state["security"]), float(state.get("checked", 0))
        except (ValueError, TypeError, KeyError) as e:
            raise Unreadable(str(ctx.path(PENDING)), f"not {{\"security\": N, ...}}: "
                             f"{e}") from None
    except Unreadable as e:
        return [unknown("system.security_updates", title, e)]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(checked)) if checked else "unknown"
    return [Finding("system.security_updates", title, count == 0,
                    f"{count} security updates pending (checked {when})", "0 pending",
                    "steward patch apply --security (or dnf upgrade --security) in the next "
                    "maintenance window",
                    "Published security fixes are what attackers try first.", source=PENDING)]
