"""``steward audit``: the security audit on this machine or a mounted image, with the rules
that newly fail since the last audit of this machine."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands import Command, Setup
from agent.env import Env
from agent.errors import UsageError
from agent.fileio import write_atomic
from agent.model import Status

FORMATS = ("text", "json", "nagios")
HISTORY = 50  # full audits whose score is kept, for the Cockpit page's chart
LAST = "audit.json"  # in the state directory: per system, each rule's status at its last audit


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser(
        "audit", help="audit the security posture (SELinux, firewall, service hardening)",
        description="Judge this appliance's security rules: SELinux, firewalld, sshd, "
        "Postfix, Dovecot, httpd, BIND and system settings, each with the value found, the "
        "value expected and the exact remedy, plus a hardening score. Exit code by the worst "
        "rule: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN. Policy choices: [checks.audit] in the config.")
    common(a)
    a.add_argument("--format", choices=FORMATS, default="text",
                   help="text for people (default), json for scripts, nagios")
    a.add_argument("--rule", metavar="ID", action="append", default=[],
                   help="only rules whose id matches (glob; repeatable), e.g. --rule "
                   "'postfix.*'")
    a.add_argument("--sysroot", type=Path, metavar="DIR",
                   help="audit the system mounted or unpacked at DIR instead of this one "
                   "(read-only; running daemons are not asked)")


def run(args: argparse.Namespace, env: Env, options: Any) -> int:
    """``options``: the effective AuditOptions (from [checks.audit])."""
    from agent.output import FORMATS as RENDER
    from agent.runner import Report
    from checks.audit import audit, score_result
    from checks.audit.base import Context

    sysroot = Path("/")
    if args.sysroot is not None:
        sysroot = args.sysroot.absolute()
        if not sysroot.is_dir():
            raise UsageError(f"--sysroot {args.sysroot}: not a directory")
        if not (sysroot / "etc").is_dir():
            raise UsageError(f"--sysroot {args.sysroot}: no etc/ folder there; give the root "
                             "of a system (where its etc/ and usr/ are)")
    t0, mono = env.clock.now(), env.clock.monotonic()
    findings = audit(Context(sysroot, options, env.commands, env.clock))
    if args.rule:
        import fnmatch
        findings = [f for f in findings
                    if any(fnmatch.fnmatchcase(f.rule, p) for p in args.rule)]
        if not findings:
            raise UsageError(f"--rule {' '.join(args.rule)}: matches no rule judged here "
                             "(steward audit --format json lists them)")
    results = [f.result() for f in findings]
    if not args.rule:
        results.append(score_result(findings, options.min_score))
    # Drift is kept per audited system, from full audits only (not --rule subsets).
    newly, history = _newly_failing(env.state_dir / LAST, sysroot, results,
                                    record=not args.rule, now=t0)
    report = Report(tuple(results), t0, env.clock.monotonic() - mono)
    host = socket.gethostname() if sysroot == Path("/") else str(sysroot)
    if args.format == "json":
        doc = json.loads(RENDER["json"](report, host, False))
        passed, total = _score(results)
        doc["audit"] = {"sysroot": str(sysroot), "score_percent": passed,
                        "rules": total, "newly_failing": newly, "history": history}
        sys.stdout.write(json.dumps(doc, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        out = RENDER[args.format](report, host, sys.stdout.isatty())
        if newly and args.format == "text":
            out += f"newly failing since the last audit: {', '.join(newly)}\n"
        sys.stdout.write(out)
    return int(report.status)


def _score(results: list[Any]) -> tuple[float | None, int]:
    for r in results:
        if r.check == "audit":
            metrics = {m.name: m.value for m in r.metrics}
            return metrics["score"], int(metrics["rules"])
    return None, len(results)


def _newly_failing(path: Path, sysroot: Path, results: list[Any], record: bool, now: float
                   ) -> tuple[list[str], list[dict[str, Any]]]:
    """Rules failing now that passed (or were not judged) at the last full audit of the same
    system (this machine, or the image at ``sysroot``); the first audit has none. And the
    score of the last HISTORY full audits, oldest first (this one, at ``now``, included when
    recorded)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    last = data.get(str(sysroot), {}).get("status") if isinstance(
        data.get(str(sysroot)), dict) else None
    statuses = {r.check: r.status.name for r in results if r.check != "audit"}
    failing = (Status.WARN.name, Status.CRIT.name)
    newly = [] if not isinstance(last, dict) else sorted(
        rule for rule, status in statuses.items() if status in failing
        and last.get(rule) not in failing)
    before = data.get(str(sysroot))
    kept = before.get("history") if isinstance(before, dict) else None
    history: list[dict[str, Any]] = [h for h in kept if isinstance(h, dict)][-HISTORY:] \
        if isinstance(kept, list) else []
    if record:
        score, _ = _score(results)
        history = [*history, {"at": int(now), "score": score}][-HISTORY:]
        data[str(sysroot)] = {"at": int(now), "status": statuses, "history": history}
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, json.dumps(data, indent=1) + "\n", mode=0o600)
        except OSError:
            pass  # a read-only state directory must not fail the audit itself
    return newly, history


def options_of(env: Env) -> Any:
    """The [checks.audit] options in force (defaults when the table is absent)."""
    from checks.audit.options import AuditOptions
    opts = env.config.checks.get("audit")
    return opts if isinstance(opts, AuditOptions) else AuditOptions()


def _command(args: argparse.Namespace, setup: Setup) -> int:
    _, env = setup(args)
    return run(args, env, options_of(env))


COMMAND = Command(add_parsers, {"audit": _command}, order=30)
