"""What one ``steward patch apply`` did, filled in step by step, and what it means: the
report's status, its headline and the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.model import Status

if TYPE_CHECKING:  # annotations only: every CLI run (`steward run` too) loads EXIT_CODES (~1 MB)
    from patch.dnfparse import Advisory, Change, Transaction
    from patch.health import Health, Shift
    from patch.rebooting import Decision

PATCHED, ATTENTION, USAGE, NOT_PATCHED = 0, 1, 2, 3
EXIT_CODES = ("Exit codes: 0 patched (or nothing to do) and health not worse; 1 patched but "
              "something needs attention (health worse, rolled back, a service restart "
              "failed, a reboot pending that the policy or the loop guard did not do, the "
              "report mail not delivered: it stays queued and steward run retries it); 2 bad "
              "arguments or config; 3 not patched: dnf failed (lock held past the window, "
              "repository unreachable, transaction or scriptlet error) or the pre-patch "
              "backup failed, so nothing or not everything was applied.")


@dataclass(frozen=True)
class Restart:
    unit: str
    ok: bool
    state: str  # "active (running)", or what went wrong


@dataclass(frozen=True)
class Rollback:
    command: str  # the exact dnf history undo command
    why_not: str = ""  # why it was not run by itself
    ran: bool = False
    transaction: Transaction | None = None
    error: str = ""
    health: Health | None = None  # health checked again after the undo
    still_worse: tuple[Shift, ...] = ()

    @property
    def recovered(self) -> bool:
        return self.ran and not self.error and self.health is not None and \
            not self.still_worse


@dataclass
class Outcome:
    host: str
    started: float
    mode: str  # security | all
    exclude: tuple[str, ...] = ()
    dry_run: bool = False
    installroot: str | None = None
    host_actions: bool = True  # maintenance, restarts and reboots on this machine
    finished: float = 0.0
    history_before: int | None = None  # dnf history's last id before (the safety point)
    history_read: bool = False  # history_before is known (None then: no history yet)
    backup: str = ""  # what the pre-patch backup did
    advisories: tuple[Advisory, ...] = ()  # looked up before the upgrade
    transaction: Transaction | None = None
    attempts: list[str] = field(default_factory=list)  # dnf attempts that were retried
    failure: str = ""  # why nothing or not everything was applied (exit 3)
    failure_kind: str = ""  # locked | repository | transaction | dnf | backup | internal
    restarts: list[Restart] = field(default_factory=list)
    restart_note: str = ""
    reboot: Decision | None = None
    reboot_note: str = ""  # the guard's or the host's reason for not rebooting
    reboot_requested: bool = False
    reboot_command: tuple[str, ...] = ()
    reboot_error: str = ""
    health_before: Health | None = None
    health_after: Health | None = None
    worse: tuple[Shift, ...] = ()
    better: tuple[Shift, ...] = ()
    rollback: Rollback | None = None
    notes: list[str] = field(default_factory=list)  # lesser troubles, said in the report
    delivered: bool | None = None  # the report mail: None when no mail is configured

    @property
    def changes(self) -> tuple[Change, ...]:
        return self.transaction.changes if self.transaction is not None else ()

    def advisories_applied(self) -> list[Advisory]:
        """The advisories the transaction's (or dry run's) new versions fix."""
        new = {f"{c.name}-{c.to_evr}.{c.arch}" for c in self.changes if c.to_evr}
        return [a for a in self.advisories if new & set(a.packages)]

    @property
    def reboot_pending(self) -> bool:
        """A reboot is needed and this run did not request one."""
        return self.reboot is not None and bool(self.reboot.needed) and \
            not self.reboot_requested

    def problems(self) -> list[str]:
        """What needs attention, the worst first (the subject names them)."""
        out = []
        if self.failure:
            out.append(self.failure)
        if self.worse:
            ids = ", ".join(s.check for s in self.worse[:3]) + (
                f" and {len(self.worse) - 3} more" if len(self.worse) > 3 else "")
            out.append(f"health worse after patching ({ids})")
        if self.rollback and self.rollback.ran:
            error = self.rollback.error
            out.append("rolled back, health recovered" if self.rollback.recovered else
                       f"rollback did not help{': ' + error if error else ''}")
        if self.reboot_error:
            out.append(f"reboot failed: {self.reboot_error}")
        failed = [r.unit for r in self.restarts if not r.ok]
        if failed:
            out.append(f"restart failed: {', '.join(failed)}")
        if self.reboot_pending and self.host_actions and not self.dry_run:
            out.append("reboot pending")
        return out

    @property
    def status(self) -> Status:
        if self.failure or self.worse or self.reboot_error:
            return Status.CRIT
        if self.problems():
            return Status.WARN
        return Status.OK

    def headline(self) -> str:
        """The subject after "[steward] host: "."""
        n = len(self.changes)
        sec = sum(a.type == "security" for a in self.advisories_applied())
        advisories = _count(sec, "security advisory", "security advisories")
        problems = self.problems()
        if self.status is Status.CRIT:
            return "patch FAILED: " + "; ".join(problems)
        if not n:
            head = "patch dry run: nothing to do" if self.dry_run else "patch: nothing to do"
        elif self.dry_run:
            head = f"patch dry run: {_count(n, 'package')} would change, {advisories}"
        else:
            head = f"patched: {_count(n, 'package')}, {advisories}"
        return "; ".join([head, *problems])

    def exit_code(self) -> int:
        if self.failure:
            return NOT_PATCHED
        if self.problems() or self.delivered is False:
            return ATTENTION
        return PATCHED


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"
