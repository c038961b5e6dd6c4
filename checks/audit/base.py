"""What every audit rule family shares: the Finding it reports, the Context it reads the
system through (a sysroot, the daemons' own tools), and the Finding -> Result mapping."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.model import Result, Status
from agent.system.commands import CommandError, CommandRunner, Completed

if TYPE_CHECKING:
    from checks.audit.options import AuditOptions

# Where host tools are looked up: root's PATH on EL9 (the daemon's PATH may lack sbin).
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_TIMEOUT = 20.0
WEIGHTS = {Status.WARN: 1, Status.CRIT: 3}  # a CRIT rule counts three times in the score


class Unreadable(Exception):
    """A configuration file or tool output the audit could not read or make sense of."""

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Finding:
    """One hardening rule judged on this system.

    ``ok`` is True (passes), False (fails, reported at ``severity``) or None (could not be
    judged: UNKNOWN, with ``found`` saying why, naming the file or tool)."""

    rule: str  # stable id "family.name", e.g. "postfix.vrfy"
    title: str  # what the rule wants, one line: "SMTP VRFY disabled"
    ok: bool | None
    found: str  # the effective value seen, e.g. "disable_vrfy_command = no"
    expected: str  # e.g. "disable_vrfy_command = yes"
    remedy: str  # the exact command or edit that makes the rule pass
    rationale: str = ""  # why it matters, one or two sentences
    severity: Status = Status.WARN  # WARN or CRIT when failing
    source: str = ""  # where the value came from: "postconf -c /etc/postfix", a file path

    def __post_init__(self) -> None:
        if self.severity not in WEIGHTS:
            raise ValueError(f"rule {self.rule}: severity must be WARN or CRIT")
        if "." not in self.rule:
            raise ValueError(f"rule id {self.rule!r} is not family.name")

    @property
    def status(self) -> Status:
        return Status.UNKNOWN if self.ok is None else Status.OK if self.ok else self.severity

    @property
    def weight(self) -> int:
        return WEIGHTS[self.severity]

    def result(self) -> Result:
        if self.ok is None:
            summary = f"{self.title}: cannot tell: {self.found}"
        elif self.ok:
            summary = f"{self.title}: {self.found}"
        else:
            summary = f"{self.title}: {self.found} (expected {self.expected})"
        details = "\n".join(x for x in (
            self.rationale, f"found: {self.found}", f"expected: {self.expected}",
            f"source: {self.source}" if self.source else "") if x)
        return Result(f"audit:{self.rule}", self.status, " ".join(summary.split()),
                      details=details, remedy="" if self.ok else self.remedy,
                      restartable=False)


def unknown(rule: str, title: str, error: Exception | str, *, expected: str = "",
            remedy: str = "", severity: Status = Status.WARN) -> Finding:
    """A rule that could not be judged, saying which file or tool stood in the way."""
    return Finding(rule, title, None, str(error), expected, remedy or "fix the file or tool "
                   "named above, then run steward audit again", severity=severity)


@dataclass(frozen=True)
class Context:
    """How a rule family sees the system: files below ``sysroot``, tools on the host.

    ``live`` is true when the sysroot is the running system: only then may a family ask
    running daemons (firewall-cmd, getenforce, listening sockets)."""

    sysroot: Path
    options: AuditOptions
    commands: CommandRunner

    @property
    def live(self) -> bool:
        return self.sysroot.resolve() == Path("/")

    def path(self, path: str) -> Path:
        """An absolute path of the audited system, below the sysroot."""
        return self.sysroot / path.lstrip("/")

    def exists(self, path: str) -> bool:
        return self.path(path).exists()

    def read(self, path: str) -> str | None:
        """The file's text; None when it does not exist; Unreadable when it cannot be read."""
        p = self.path(path)
        try:
            return p.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unreadable(str(p), e.strerror or str(e)) from None

    def tool(self, name: str) -> str | None:
        """The host's program ``name`` (absolute path), or None when it is not installed."""
        return shutil.which(name, path=os.pathsep.join((TOOL_PATH, os.environ.get("PATH", ""))))

    def run(self, argv: Sequence[str], *, ok_codes: Sequence[int] = (0,),
            timeout: float = TOOL_TIMEOUT) -> Completed:
        """Run a tool; any failure becomes Unreadable naming the command and its error."""
        try:
            return self.commands.run(argv, timeout=timeout, ok_codes=ok_codes)
        except CommandError as e:
            raise Unreadable(" ".join(argv), f"{e.reason}: {e.stderr_tail}".rstrip(": ")) \
                from None

    def enabled_units(self) -> frozenset[str]:
        """Units enabled at boot in the audited system (from the .wants/ links, which is what
        ``systemctl enable`` writes), e.g. {"postfix.service", "sshd.service"}."""
        units: set[str] = set()
        for base in ("etc/systemd/system", "usr/lib/systemd/system"):
            root = self.sysroot / base
            try:
                wants = [d for d in root.iterdir() if d.name.endswith((".wants", ".requires"))]
            except OSError:
                continue
            for d in wants:
                try:
                    units.update(e.name for e in d.iterdir())
                except OSError:
                    continue
        return frozenset(units)


def results(findings: Iterable[Finding]) -> list[Result]:
    return [f.result() for f in findings]
