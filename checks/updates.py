"""Pending dnf updates: how many fix security advisories, and how long the oldest of those
has been published (``dnf check-update`` and ``dnf updateinfo``, every 6 hours).

Silent where dnf is not installed. Under ``steward run`` the counts also go to
``<state_dir>/patch/pending.json`` for the audit's system.security_updates rule. The dnf
adapter is imported only when the check runs, so a daemon that never runs it never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config.schema import RANGE, CheckOptions, number, option
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.ranges import Range, judge

if TYPE_CHECKING:
    from patch.dnf import DnfError
    from patch.pending import Pending

log = logging.getLogger(__name__)

DAY = 86400.0
REMEDY = ("apply them in the next maintenance window: steward patch apply (or dnf upgrade "
          "--security); see what is pending: steward patch check")


@dataclass(frozen=True)
class UpdatesOptions(CheckOptions):
    interval: float = option(6 * 3600.0, number(60, 7 * 86400), "seconds between runs under "
                             "steward run (each run refreshes dnf's metadata)")
    timeout: float = option(300.0, number(1, 3600), "seconds dnf may take before the check "
                            "is UNKNOWN")
    security_warn: Range | None = option(None, RANGE, "pending security updates (packages), "
                                         "e.g. 0 to warn at the first one")
    security_crit: Range | None = option(None, RANGE, "pending security updates (packages)")
    age_warn_days: float | None = option(14.0, number(0, 3650), "days since the oldest "
                                         "pending security advisory was issued")
    age_crit_days: float | None = option(None, number(0, 3650), "days since the oldest "
                                         "pending security advisory was issued")


def _days_range(days: float | None) -> Range | None:
    return Range.parse(f"{days:g}") if days is not None else None


def _seconds(days: float | None) -> str:
    return f"{days * DAY:g}" if days is not None else ""


class UpdatesCheck(Check):
    name = "updates"
    Options = UpdatesOptions
    options: UpdatesOptions

    def run(self, env: Env) -> Iterable[Result]:
        root = None if env.sysroot == env.sysroot.parent else env.sysroot  # "/" is itself
        if not env.keeps_state and root is None:
            # A one-shot steward check (Nagios every few minutes) judges the daemon's last
            # look while it is younger than the interval: dnf is slow and refreshes metadata.
            from patch.pending import read_state

            last = read_state(env.state_dir)
            if last is not None and 0 <= env.clock.now() - last.checked < self.options.interval:
                return [self.judge(last, env.clock.now())]
        if env.commands.which("dnf") is None:
            return []  # no dnf here; and the daemon never loads the dnf adapter (~1 MB)
        from patch.dnf import Dnf, DnfError, DnfNotInstalled
        from patch.pending import look, write_state

        dnf = Dnf(env.commands, root, timeout=self.options.timeout)
        try:
            pending = look(dnf, env.clock.now())
        except DnfNotInstalled:
            return []
        except DnfError as e:
            return [self.result(Status.UNKNOWN, f"dnf failed: {e.reason}", details=str(e),
                                remedy=_remedy(e), restartable=False)]
        if env.keeps_state:
            try:
                write_state(env.state_dir, pending)
            except OSError as e:
                log.warning("cannot write %s/patch/pending.json: %s", env.state_dir, e)
        return [self.judge(pending, env.clock.now())]

    def judge(self, p: Pending, now: float) -> Result:
        o = self.options
        n, m = len(p.security_packages), len(p.updates)
        oldest = p.oldest_security_issued
        age = max(0.0, now - oldest) if oldest is not None else 0.0
        status = Status(max(judge(n, o.security_warn, o.security_crit),
                            judge(age / DAY, _days_range(o.age_warn_days),
                                  _days_range(o.age_crit_days)) if oldest is not None else 0))
        summary = f"{n} security update{'s' if n != 1 else ''} pending ({m} in all)"
        if oldest is not None:
            summary += f", oldest advisory {age / DAY:.0f} days"
        metrics = (
            Metric("security", n, "", o.security_warn.text if o.security_warn else "",
                   o.security_crit.text if o.security_crit else "", 0),
            Metric("updates", m, "", min=0),
            Metric("oldest_security_age", round(age), "s", _seconds(o.age_warn_days),
                   _seconds(o.age_crit_days), 0),
            Metric("critical", sum(a.severity == "Critical" for a in p.security), min=0),
        )
        return self.result(status, summary, details=_details(p, now), metrics=metrics,
                           remedy=REMEDY if status is not Status.OK else "",
                           restartable=False)


def _details(p: Pending, now: float) -> str:
    lines = []
    for a in sorted(p.security, key=lambda a: (a.published or 0, a.id)):
        when = f", {(now - a.published) / DAY:.0f} days old" if a.published else ""
        cves = f" {' '.join(a.cves[:5])}{' ...' if len(a.cves) > 5 else ''}" if a.cves else ""
        lines.append(f"{a.id} {a.severity}{when}: {' '.join(a.packages[:5])}{cves}")
    others = [u.nevra for u in p.updates if u.name not in set(p.security_packages)]
    if others:
        lines.append(f"other updates: {' '.join(others[:20])}"
                     f"{f' and {len(others) - 20} more' if len(others) > 20 else ''}")
    return "\n".join(lines)


def _remedy(e: DnfError) -> str:
    from patch.dnf import DnfLocked, DnfRepoError

    if isinstance(e, DnfLocked):
        return "another dnf is running (dnf-automatic, PackageKit, a person) and usually " \
               "finishes by itself; if it does not: ps -p PID, and the lock files " \
               "/var/cache/dnf/*_lock.pid and /var/lib/dnf/rpmdb_lock.pid"
    if isinstance(e, DnfRepoError):
        return "check the network and the repository settings: dnf repolist -v; " \
               "dnf makecache"
    return "run dnf check-update by hand to see the whole error"
