"""SELinux rules: enforcing at boot and now, not switched off on the kernel command line, and
the last day's AVC denials summarised per source domain (what restorecon/setsebool fix)."""

from __future__ import annotations

import re
import shlex
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from agent.model import Status
from checks.audit.base import Context, Finding, Unreadable, unknown

ORDER = 10  # place in the audit report (steward.audit entry point)

CONFIG = "/etc/selinux/config"
ENFORCE = "/sys/fs/selinux/enforce"
AUDIT_LOG = "/var/log/audit/audit.log"
WINDOW = 86400.0  # denials older than a day are history, not a current problem
_GOOD_POLICIES = ("targeted", "mls")
_NEVER = ("Keep SELinux enforcing while fixing: permissive mode would lift the protection from "
          "every service, not just this one.")

_AVC = re.compile(r"type=(USER_)?AVC msg=audit\((\d+)(?:\.\d+)?:\d+\):.*?avc:\s+denied\s+"
                  r"\{\s*([^}]*?)\s*\}(.*)")
_FIELD = re.compile(r'\b(comm|exe|name|path|scontext|tclass|permissive)=("[^"]*"|\S+)')


def audit(ctx: Context) -> list[Finding]:
    """The context's clock bounds the AVC window (the last day)."""
    findings: list[Finding] = []
    boot = _boot_mode(ctx, findings)
    findings.extend(_running(ctx, boot))
    try:
        findings.append(_cmdline(ctx))
    except Unreadable as e:
        findings.append(unknown("selinux.cmdline", "Kernel command line keeps SELinux on", e,
                                severity=Status.CRIT))
    try:
        findings.extend(_avc(ctx, ctx.clock.now()))
    except Unreadable as e:
        findings.append(unknown("selinux.avc", "No recent SELinux denials", e))
    return findings


def _settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            out[key.strip().upper()] = value.strip().strip("\"'")
    return out


def _boot_mode(ctx: Context, findings: list[Finding]) -> str | None:
    """Judge /etc/selinux/config; returns the boot mode (None when it cannot be read)."""
    title = "SELinux enforcing at boot"
    try:
        text = ctx.read(CONFIG)
    except Unreadable as e:
        findings.append(unknown("selinux.mode", title, e, severity=Status.CRIT))
        return None
    fix = (f"set SELINUX=enforcing in {CONFIG}; coming from disabled, first "
           "`touch /.autorelabel`, then reboot")
    why = ("SELinux confines each daemon to its own files and ports, so a compromised web or "
           "mail service cannot read the rest of the system.")
    if text is None:
        findings.append(Finding("selinux.mode", title, False, f"no {CONFIG}: SELinux disabled",
                                "SELINUX=enforcing", fix, why, Status.CRIT, CONFIG))
        return "disabled"
    settings = _settings(text)
    mode = settings.get("SELINUX", "").lower()
    if mode not in ("enforcing", "permissive", "disabled"):
        findings.append(unknown("selinux.mode", title, Unreadable(
            str(ctx.path(CONFIG)), f"SELINUX={mode or '(missing)'} is not enforcing, "
            "permissive or disabled"), severity=Status.CRIT))
        return None
    findings.append(Finding("selinux.mode", title, mode == "enforcing", f"SELINUX={mode}",
                            "SELINUX=enforcing", fix, why, Status.CRIT, CONFIG))
    policy = settings.get("SELINUXTYPE", "")
    findings.append(Finding(
        "selinux.policy", "SELinux targeted policy", policy in _GOOD_POLICIES,
        f"SELINUXTYPE={policy or '(missing)'}", "SELINUXTYPE=targeted",
        f"set SELINUXTYPE=targeted in {CONFIG}, `touch /.autorelabel` and reboot",
        "The targeted policy is what confines httpd, postfix, dovecot and named on EL9; "
        "'minimum' leaves most daemons unconfined.", source=CONFIG))
    return mode


def _running(ctx: Context, boot: str | None) -> list[Finding]:
    """The mode now, from selinuxfs (only on the live system, or a sysroot that provides it)."""
    if not ctx.live and not ctx.exists("/sys/fs/selinux"):
        return []
    title = "SELinux running as configured"
    try:
        value = ctx.read(ENFORCE) if ctx.exists("/sys/fs/selinux") else None
        if value is not None and value.strip() not in ("0", "1"):
            raise Unreadable(str(ctx.path(ENFORCE)), f"{value.strip()[:20]!r} is not 0 or 1")
    except Unreadable as e:
        return [unknown("selinux.running", title, e)]
    now = "disabled" if value is None else "enforcing" if value.strip() == "1" else "permissive"
    expected = boot or "enforcing"
    if now == expected:
        remedy = ""
    elif now == "permissive":
        remedy = "setenforce 1   # then find who switched it off: ausearch -m MAC_STATUS -i"
    elif now == "disabled":
        remedy = ("look for selinux=0 on the kernel command line (grubby --info DEFAULT), then "
                  "`touch /.autorelabel && reboot` (files written meanwhile carry no labels)")
    else:
        remedy = f"set SELINUX=enforcing in {CONFIG} so the next boot keeps enforcing"
    return [Finding("selinux.running", title, now == expected, f"running {now}",
                    f"running {expected} (as {CONFIG} says)" if boot else "running enforcing",
                    remedy, "A running mode that differs from the configuration means someone "
                    "ran setenforce, or the next boot will change the protection.",
                    source=ENFORCE)]


def _cmdline(ctx: Context) -> Finding:
    """selinux=0 or enforcing=0 on the kernel command line overrides /etc/selinux/config."""
    sources: list[tuple[str, str]] = []  # (where, command line)
    grub = ctx.read("/etc/default/grub")
    if grub is not None:
        for line in grub.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
                try:
                    sources.append((f"/etc/default/grub {key}", " ".join(shlex.split(value))))
                except ValueError as e:
                    raise Unreadable(str(ctx.path("/etc/default/grub")), f"{key}: {e}") from None
    for path in ("/etc/kernel/cmdline", "/proc/cmdline"):  # /proc: only on the live system
        text = ctx.read(path)
        if text is not None:
            sources.append((path, text))
    for entry in ctx.glob("/boot/loader/entries/*.conf"):
        text = ctx.read(entry) or ""
        sources += [(entry, line.strip()[len("options"):])
                    for line in text.splitlines() if line.strip().startswith("options")]
    bad = [f"{arg} in {where}" for where, line in sources for arg in line.split()
           if arg in ("selinux=0", "enforcing=0")]
    return Finding(
        "selinux.cmdline", "Kernel command line keeps SELinux on", not bad,
        "; ".join(bad) or f"no selinux=0 or enforcing=0 ({len(sources)} command lines read)",
        "no selinux=0 or enforcing=0", 'grubby --update-kernel ALL --remove-args "selinux '
        'enforcing", and remove them from GRUB_CMDLINE_LINUX in /etc/default/grub; reboot',
        "selinux=0 disables and enforcing=0 relaxes SELinux whatever /etc/selinux/config says.",
        Status.CRIT, "/etc/default/grub, /etc/kernel/cmdline, /boot/loader/entries, "
        "/proc/cmdline")


@dataclass
class Denial:
    when: float
    perms: str
    domain: str
    comm: str
    tclass: str
    target: str  # name= or path=, may be ""
    permissive: bool
    user: bool  # a USER_AVC: denied by a userspace object manager (systemd, dbus)


def parse_denials(lines: Iterable[str]) -> list[Denial]:
    """The AVC/USER_AVC 'denied' records among raw audit lines (audit.log, ausearch --raw)."""
    out = []
    for line in lines:
        m = _AVC.search(line)
        if not m:
            continue
        fields = {k: v.strip('"') for k, v in _FIELD.findall(m[4])}
        context = fields.get("scontext", "").split(":")
        comm = fields.get("comm") or fields.get("exe", "").rsplit("/", 1)[-1]
        if comm and re.fullmatch(r"(?:[0-9A-F]{2})+", comm):  # audit hex-encodes odd names
            comm = bytes.fromhex(comm).decode(errors="replace")
        out.append(Denial(float(m[2]), " ".join(m[3].split()),
                          context[2] if len(context) > 2 else "unknown", comm or "?",
                          fields.get("tclass", "?"), fields.get("path") or fields.get("name", ""),
                          fields.get("permissive") == "1", bool(m[1])))
    return out


def _avc(ctx: Context, now: float) -> list[Finding]:
    if not ctx.live and not ctx.exists(AUDIT_LOG):
        return []
    log, ausearch = ctx.real_path(AUDIT_LOG), ctx.tool("ausearch")
    if ausearch and (ctx.live or log.is_file()):
        # ausearch reads what auditd.conf names, rotated files included; "-ts recent" is only
        # ten minutes, so ask from yesterday's midnight and cut the window below.
        argv = [ausearch, "-m", "AVC,USER_AVC", "-ts", "yesterday", "--raw"]
        if not ctx.live:
            argv += ["-if", str(log)]
        done = ctx.run(argv, ok_codes=(0, 1))
        problem = done.stderr.replace("<no matches>", "").strip()  # --raw says nothing
        if done.returncode == 1 and problem:
            if not log.exists():
                return []  # no audit log on this live system: nothing to summarise
            raise Unreadable(" ".join(argv), problem[-300:])
        lines, source = done.stdout.splitlines(), "ausearch " + " ".join(argv[1:])
    else:
        text = ctx.read(AUDIT_LOG)
        if text is None:
            return []
        lines, source = text.splitlines(), AUDIT_LOG
    recent = [d for d in parse_denials(lines) if now - WINDOW <= d.when <= now + 60]
    if not recent:
        return [Finding("selinux.avc", "No recent SELinux denials", True,
                        "no AVC denials in the last 24 h", "no AVC denials", "",
                        source=source)]
    domains: dict[str, list[Denial]] = {}
    for d in recent:
        domains.setdefault(d.domain, []).append(d)
    return [_domain_finding(name, found, source) for name, found in sorted(domains.items())]


def _domain_finding(domain: str, denials: list[Denial], source: str) -> Finding:
    def top(values: Iterable[str]) -> str:
        (value, n), = Counter(values).most_common(1)
        return f"{value} ({n})"

    def stamp(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    targets = sorted({d.target for d in denials if d.target})[:3]
    permissive = sum(d.permissive for d in denials)
    found = (f"{len(denials)} denial{'s' if len(denials) > 1 else ''}, "
             f"{stamp(min(d.when for d in denials))} .. {stamp(max(d.when for d in denials))}; "
             f"top comm {top(d.comm for d in denials)}, tclass {top(d.tclass for d in denials)}, "
             f"permission {top(d.perms for d in denials)}"
             + (f"; on {', '.join(targets)}" if targets else "")
             + (f"; {permissive} only logged (permissive)" if permissive else ""))
    kernel = [d.comm for d in denials if not d.user]
    if kernel:  # the process name finds kernel AVCs; USER_AVCs carry the object manager's
        comm = Counter(kernel).most_common(1)[0][0]
        look = f"ausearch -m AVC -ts yesterday -c {shlex.quote(comm)} | audit2why"
    else:
        look = f"ausearch -m USER_AVC -ts yesterday --raw | grep -w {domain} | audit2why"
    fixes = [look]
    classes = {d.tclass for d in denials}
    if classes & {"file", "dir", "lnk_file", "sock_file"}:
        fixes.append("mislabelled files: restorecon -Rv PATH (or semanage fcontext -a -t TYPE "
                     "'PATH(/.*)?' && restorecon -Rv PATH for a non-standard location)")
    if classes & {"tcp_socket", "udp_socket"}:
        fixes.append("a non-standard port: semanage port -a -t TYPE -p tcp PORT")
    fixes.append("a feature switched off: the boolean audit2why names, setsebool -P BOOL on")
    return Finding(f"selinux.avc.{domain}", f"No recent SELinux denials for {domain}", False,
                   found, "no AVC denials in the last 24 h", "; ".join(fixes) + ". " + _NEVER,
                   "Denials mean a service was stopped from doing something: either a "
                   "misconfiguration that breaks it or an attack that SELinux contained.",
                   source=source)
