"""What every audit rule family shares: the Finding it reports, the Context it reads the
system through (files below a sysroot, symbolic links kept inside it; the daemons' own tools),
the Finding -> Result mapping, and Rules for the families that judge one loaded configuration
rule by rule (postfix, dovecot)."""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TypeVar

from agent.model import Result, Status
from agent.system.clock import Clock
from agent.system.commands import CommandError, CommandRunner, Completed

if TYPE_CHECKING:
    from checks.audit.options import AuditOptions

# Where host tools are looked up: root's PATH on EL9 (the daemon's PATH may lack sbin).
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_TIMEOUT = 20.0
MAX_LINKS = 40  # symbolic links followed in one path before it is a loop, as Linux does
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
            remedy: str = "", severity: Status = Status.WARN, source: str = "") -> Finding:
    """A rule that could not be judged, saying which file or tool stood in the way."""
    return Finding(rule, title, None, str(error), expected, remedy or "fix the file or tool "
                   "named above, then run steward audit again", severity=severity,
                   source=source)


class Verdict(NamedTuple):
    """What a rule's judge found: ``ok`` as in Finding; the severity when not the rule's own."""

    ok: bool | None
    found: str
    expected: str
    remedy: str
    severity: Status | None = None  # None: the rule's own


class Loaded(Protocol):
    """A family's configuration as loaded for its rules, saying where it came from."""

    @property
    def source(self) -> str: ...


C = TypeVar("C", bound=Loaded)


@dataclass(frozen=True)
class Rule(Generic[C]):
    rule: str  # "family.name"
    title: str
    severity: Status
    rationale: str
    judge: Callable[[C], Verdict]


class Rules(Generic[C]):
    """A family's rules in report order, each a judge of the configuration it loads."""

    def __init__(self) -> None:
        self._rules: list[Rule[C]] = []

    def __iter__(self) -> Iterator[Rule[C]]:
        return iter(self._rules)

    def rule(self, rule: str, title: str, severity: Status = Status.WARN, why: str = ""
             ) -> Callable[[Callable[[C], Verdict]], Callable[[C], Verdict]]:
        """Register a judge (a decorator); its rationale is ``why`` or the judge's docstring."""
        def register(judge: Callable[[C], Verdict]) -> Callable[[C], Verdict]:
            self._rules.append(Rule(rule, title, severity,
                                    why or " ".join((judge.__doc__ or "").split()), judge))
            return judge
        return register

    def audit(self, ctx: Context, load: Callable[[Context], C]) -> list[Finding]:
        """Every rule judged on ``load(ctx)``; UNKNOWN, naming the file or tool, where the
        configuration cannot be loaded or a judge cannot read what it needs."""
        try:
            cfg = load(ctx)
        except Unreadable as e:
            return [unknown(r.rule, r.title, e, severity=r.severity) for r in self]
        findings = []
        for r in self:
            try:
                v = r.judge(cfg)
            except Unreadable as e:
                findings.append(unknown(r.rule, r.title, e, severity=r.severity))
                continue
            findings.append(Finding(r.rule, r.title, v.ok, v.found, v.expected, v.remedy,
                                    r.rationale, v.severity or r.severity, cfg.source))
        return findings


@dataclass(frozen=True)
class Context:
    """How a rule family sees the system: files below ``sysroot``, tools on the host.

    ``live`` is true when the sysroot is the running system: only then may a family ask
    running daemons (firewall-cmd, getenforce, listening sockets). ``clock`` says what time
    it is (what counts as recent in a log)."""

    sysroot: Path
    options: AuditOptions
    commands: CommandRunner
    clock: Clock = field(default_factory=Clock)

    @property
    def live(self) -> bool:
        return self.sysroot.resolve() == Path("/")

    def path(self, path: str) -> Path:
        """An absolute path of the audited system, below the sysroot (links not followed)."""
        return self.sysroot / path.lstrip("/")

    def real_path(self, path: str) -> Path:
        """The audited system's ``path`` below the sysroot, its symbolic links followed inside
        the sysroot: an absolute link (EL9's /etc/crypto-policies/back-ends/*.config,
        /etc/pki/tls/cert.pem) names a file of the audited system, not of the host, and ".."
        stops at the sysroot. The result need not exist; a loop is Unreadable."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                del done[-1:]
                continue
            here = self.sysroot.joinpath(*done, part)
            try:
                if not here.is_symlink():
                    done.append(part)
                    continue
                target = os.readlink(here)
            except OSError as e:
                raise Unreadable(str(here), e.strerror or str(e)) from None
            hops += 1
            if hops > MAX_LINKS:
                raise Unreadable(str(self.path(path)), "too many levels of symbolic links")
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        return self.sysroot.joinpath(*done)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the audited system (False for a dangling link, a loop)."""
        try:
            return self.real_path(path).exists()
        except Unreadable:
            return False

    def _there(self, path: str) -> bool:
        """Whether the audited system has an entry ``path``, a dangling link included."""
        head, _, name = path.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            return self.exists(path)
        try:
            return os.path.lexists(self.real_path(head) / name)
        except Unreadable:
            return False

    def glob(self, pattern: str, *, recursive: bool = False) -> list[str]:
        """The audited system's absolute paths matching ``pattern`` (glob(3) wildcards, "**" as
        well when ``recursive``; hidden names only for a part starting with "."), sorted; a
        pattern without wildcards, itself if it is there. Each folder is listed inside the
        sysroot (real_path), so the sysroot's own name is never a pattern and links never
        lead to the host; a dangling link is there (reading it says what is wrong)."""
        if not glob.has_magic(pattern):
            return [pattern] if self._there(pattern) else []
        found = [""]  # the paths matched so far, "" for "/"
        for part in pattern.split("/"):
            if part in ("", "."):
                continue
            if recursive and part == "**":
                found = [p for f in found for p in self._tree(f, frozenset())]
            elif glob.has_magic(part):
                found = [f"{f}/{n}" for f in found for n in self.listdir(f or "/")
                         if fnmatch.fnmatchcase(n, part) and (part[0] == "." or n[0] != ".")]
            else:
                found = [f"{f}/{part}" for f in found]
        if pattern.endswith("/"):  # folders only, as with glob(3)
            found = [f for f in found if self._folder(f or "/")]
        return sorted({f or "/" for f in found if self._there(f or "/")})

    def _folder(self, path: str) -> bool:
        try:
            return self.real_path(path).is_dir()
        except Unreadable:
            return False

    def _tree(self, top: str, above: frozenset[Path]) -> list[str]:
        """``top`` and everything below it but hidden names, for "**"; a link to a folder
        ``above`` (a loop) is not entered."""
        try:
            real = self.real_path(top or "/")
        except Unreadable:
            return [top]
        if real in above or not real.is_dir():
            return [top]
        return [top, *(p for name in self.listdir(top or "/") if name[0] != "."
                       for p in self._tree(f"{top}/{name}", above | {real}))]

    def listdir(self, path: str) -> list[str]:
        """The names in the audited system's folder ``path``, sorted; none when it is not a
        folder (or cannot be listed)."""
        try:
            return sorted(os.listdir(self.real_path(path)))
        except (OSError, Unreadable):
            return []

    def read(self, path: str) -> str | None:
        """The file's text (links followed inside the sysroot); None when it does not exist;
        Unreadable when it cannot be read."""
        try:
            return self.real_path(path).read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unreadable(str(self.path(path)), e.strerror or str(e)) from None

    def text(self, path: str) -> str:
        """The file's text, as read(); Unreadable when it does not exist either."""
        text = self.read(path)
        if text is None:
            raise Unreadable(str(self.path(path)), "No such file or directory")
        return text

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
        return frozenset(unit for base in ("/etc/systemd/system", "/usr/lib/systemd/system")
                         for d in self.listdir(base) if d.endswith((".wants", ".requires"))
                         for unit in self.listdir(f"{base}/{d}"))


def results(findings: Iterable[Finding]) -> list[Result]:
    return [f.result() for f in findings]
