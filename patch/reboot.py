"""When updates call for a reboot: dnf's list of core packages, and needs-restarting -r's
test (a core package installed since boot) made without the plugin, from rpm's install
times."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.system.commands import CommandError, CommandRunner
from patch.errors import DnfError

log = logging.getLogger(__name__)

# dnf-plugins-core's needs-restarting NEED_REBOOT as of 4.4 (after
# https://access.redhat.com/solutions/27943); the plugin adds the names listed in
# /etc/dnf/plugins/needs-restarting.d/*.conf, and so does installtime_hint.
CORE_PACKAGES = ("kernel", "kernel-core", "kernel-rt", "glibc", "linux-firmware", "systemd",
                 "dbus", "dbus-broker", "dbus-daemon", "microcode_ctl")


@dataclass(frozen=True)
class RebootHint:
    needed: bool
    packages: tuple[str, ...]  # the core packages updated since boot
    source: str  # "needs-restarting", or "installtime" when the plugin is missing


def core_packages_in(names: Iterable[str], extra: Iterable[str] = ()) -> list[str]:
    """The names (e.g. of a transaction's changes) that call for a reboot."""
    core = set(CORE_PACKAGES) | set(extra)
    return sorted({n for n in names if n in core})


def extra_core(root: Path) -> set[str]:
    """Names an admin added in <root>/etc/dnf/plugins/needs-restarting.d/*.conf."""
    found = set()
    for conf in sorted((root / "etc/dnf/plugins/needs-restarting.d").glob("*.conf")):
        try:
            found |= {s.strip() for s in conf.read_text().splitlines() if s.strip()}
        except OSError as e:
            log.warning("cannot read %s: %s", conf, e.strerror)
    return found


def boot_time(now: float) -> float:
    """When this machine booted, as needs-restarting reckons it (the later of /proc/1's
    start and ``now`` minus uptime: containers and machines without a clock differ)."""
    proc1 = Path("/proc/1").stat().st_mtime
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return proc1
    return max(proc1, now - uptime)


def installtime_hint(runner: CommandRunner, installroot: Path | None, *, now: float,
                     booted: float | None = None) -> RebootHint:
    """A reboot is needed when a core package was installed after ``booted`` (default:
    this boot, as seen at ``now``). Asks ``rpm -q --qf`` (whose exit code counts the names
    not installed)."""
    names = sorted(set(CORE_PACKAGES) | extra_core(installroot or Path("/")))
    argv = ["rpm", "-q", "--qf", "%{NAME}\t%{INSTALLTIME}\n",
            *(["--root", str(installroot)] if installroot else []), *names]
    try:
        done = runner.run(argv, timeout=60, ok_codes=range(256))
    except CommandError as e:
        raise DnfError(argv, e.returncode, e.stderr_tail, e.reason) from None
    since = boot_time(now) if booted is None else booted
    newer = set()
    for line in done.stdout.splitlines():
        name, _, stamp = line.partition("\t")
        if stamp.strip().isdigit() and int(stamp) > since:
            newer.add(name)
    return RebootHint(bool(newer), tuple(sorted(newer)), "installtime")
