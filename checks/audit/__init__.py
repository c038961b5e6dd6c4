"""The security audit: rule families (one module each, imported when the audit runs) judged
on the running system or a sysroot, a hardening score, and the ``audit`` check plugin that
puts every rule into ``steward check`` and the daemon (a rule newly failing is an alert)."""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from agent.entrypoints import entry_points
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from checks.audit.base import Context, Finding, Unreadable, unknown
from checks.audit.options import AuditOptions

log = logging.getLogger(__name__)

GROUP = "steward.audit"  # entry points: family name -> module with audit(ctx) -> Findings


def families() -> list[tuple[str, Any]]:
    """The rule families of every installed distribution (``steward.audit`` entry points),
    in report order: by the module's ORDER (steward's own: 10 to 80; 100 when unset), then
    name. One that fails to import is kept, as its error, to be reported as UNKNOWN."""
    found: list[tuple[int, str, Any]] = []
    for ep in entry_points(GROUP):
        try:
            module: Any = ep.load()
        except Exception as e:  # a broken family must not hide the others
            module = e
        found.append((getattr(module, "ORDER", 100), ep.name, module))
    return [(name, module) for _, name, module in sorted(found, key=lambda t: t[:2])]


def audit(ctx: Context, only: Sequence[str] | None = None) -> list[Finding]:
    """Every applicable rule of the installed families (or of ``only``) judged on ``ctx``,
    less ``skip``ped ones. A family that cannot be read at all is one UNKNOWN finding naming
    what stood in the way; a family that fails unexpectedly (or does not load) is one too
    (with the error), never a traceback."""
    out: list[Finding] = []
    for name, module in families():
        if only is not None and name not in only:
            continue
        try:
            if isinstance(module, Exception):
                raise module
            found = list(module.audit(ctx))
        except Unreadable as e:
            found = [unknown(f"{name}.config", f"{name} configuration readable", e)]
        except Exception as e:  # a bug in a family must not hide the others
            log.exception("audit family %s failed", name)
            found = [unknown(f"{name}.error", f"{name} audit ran", f"{type(e).__name__}: {e}",
                             remedy="report this as a bug of the family's package, with "
                             "steward audit -vv")]
        out.extend(f for f in found if not _skipped(f.rule, ctx.options.skip))
    return out


def _skipped(rule: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(rule, p) for p in patterns)


def score(findings: Iterable[Finding]) -> tuple[int, int]:
    """(weight of passing rules, weight of judged rules); UNKNOWN rules are not judged."""
    judged = [f for f in findings if f.ok is not None]
    return sum(f.weight for f in judged if f.ok), sum(f.weight for f in judged)


def score_result(findings: Sequence[Finding], min_score: int) -> Result:
    passed, total = score(findings)
    pct = round(100 * passed / total) if total else 100
    failing = sum(f.ok is False for f in findings)
    unknowns = sum(f.ok is None for f in findings)
    summary = (f"hardening score {pct} % ({len(findings) - failing - unknowns} of "
               f"{len(findings)} rules pass" + (f", {unknowns} cannot be judged" if unknowns
                                                else "") + ")")
    status = Status.WARN if pct < min_score else Status.OK
    return Result("audit", status, summary,
                  details="score: weight of passing rules / weight of judged rules (CRIT rules "
                  "weigh 3, WARN rules 1)",
                  remedy="" if status is Status.OK else "fix the failing audit rules above "
                  "(steward audit shows each with its remedy)",
                  metrics=(Metric("score", pct, "%", warn=f"{min_score}:" if min_score else "",
                                  min=0, max=100),
                           Metric("rules", len(findings)), Metric("failing", failing),
                           Metric("unknown", unknowns)),
                  restartable=False)


CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from checks.audit.child import main; main()"


class AuditCheck(Check):
    """The audit as a check: one result per rule plus the score."""

    name: ClassVar[str] = "audit"
    Options = AuditOptions
    options: AuditOptions

    def run(self, env: Env) -> Iterable[Result]:
        if env.keeps_state:  # under steward run: in a child process, see checks.audit.child
            return self._in_child(env)
        findings = audit(Context(env.sysroot, self.options, env.commands, env.clock))
        return [*(f.result() for f in findings),
                score_result(findings, self.options.min_score)]

    def _in_child(self, env: Env) -> list[Result]:
        from checks.audit import wire

        # The child imports steward from where this process found it, however steward was
        # installed or started (a venv, an RPM, a wrapper that extends sys.path).
        home = str(Path(__file__).resolve().parents[2])
        done = env.commands.run([sys.executable, "-c", CHILD, home],
                                input=wire.request(str(env.sysroot), self.options),
                                timeout=max(1.0, self.options.timeout - 1))
        try:
            return wire.results(done.stdout)
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"the audit's child process answered no results ({e}): "
                               f"{done.stderr.strip()[-300:]}") from None
