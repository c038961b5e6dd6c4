"""The patch report: the outcome as template data, rendered by the patch-*.j2 templates (which
an admin may override like the alert templates), printed on stdout and mailed through the
persistent outbox, so a report that cannot be delivered now stays queued for ``steward run``.
Every ``[notify.email]`` recipient gets it, whatever their min_severity: a patch window's
report is news even when all went well."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from agent.config import Config
from agent.notify.templates import SUBJECT_MAX, Templates, build_message
from agent.system.clock import Clock
from patch.outcome import Outcome, Rollback

_COLOUR = {"OK": "#2e7d32", "WARN": "#e69500", "CRIT": "#c62828"}


class ReportTemplates(Templates):
    """The alert templates' loader and override folder, with the report's three files."""

    def render_report(self, ctx: Mapping[str, Any]) -> tuple[str, str, str]:
        subject = " ".join(self._render("patch-subject.txt.j2", ctx).split())
        if len(subject) > SUBJECT_MAX:
            subject = subject[:SUBJECT_MAX - 1].rstrip() + "…"
        full = {**ctx, "subject": subject}
        return (subject, self._render("patch-report.txt.j2", full),
                self._render("patch-report.html.j2", full))


def view(out: Outcome, now: float) -> dict[str, Any]:
    """What the templates see (all plain strings, lists and dicts); the report is dated when
    the run finished, else ``now``."""
    status = out.status.name
    tx = out.transaction
    return {
        "host": out.host, "now": _local(out.finished or now), "status": status,
        "colour": _COLOUR.get(status, "#6a1b9a"), "headline": out.headline(),
        "problems": out.problems(), "failure": out.failure, "mode": out.mode,
        "exclude": list(out.exclude), "dry_run": out.dry_run, "installroot": out.installroot,
        "attempts": list(out.attempts), "backup": out.backup,
        "packages": [{"name": c.name, "arch": c.arch, "action": c.action,
                      "from": c.from_evr or "", "to": c.to_evr or "", "line": _change(c)}
                     for c in out.changes],
        "advisories": [{"id": a.id, "type": a.type, "severity": a.severity,
                        "cves": list(a.cves), "title": a.title,
                        "reboot_suggested": a.reboot_suggested,
                        "line": " ".join(x for x in (
                            a.id, a.type, a.severity if a.type == "security" else "",
                            ",".join(a.cves), a.title) if x)}
                       for a in out.advisories_applied()],
        "restarts": [{"unit": r.unit, "ok": r.ok, "state": r.state} for r in out.restarts],
        "restart_note": out.restart_note or _no_restarts(out),
        "reboot": reboot_line(out),
        "health": _health(out),
        "rollback": _rollback(out.rollback) if out.rollback else None,
        "history": _history(out),
        "scriptlet_errors": list(tx.scriptlet_errors) if tx else [],
        "taken": _taken(out.finished - out.started) if out.finished else "",
        "notes": list(out.notes),
    }


def _no_restarts(out: Outcome) -> str:
    if out.dry_run:
        return "none: dry run"
    if out.transaction is None and out.failure:
        return "none: nothing was applied"
    if out.failure:
        return "none: the transaction failed; restart what it touched once it is fixed"
    return "none needed"


def _history(out: Outcome) -> str:
    """dnf history's safety point and this patch's transaction, as one line ("" if unknown)."""
    tx = out.transaction
    if not out.history_read:
        return ""
    text = f"{out.history_before if out.history_before is not None else 'empty'} before"
    if tx is not None and tx.id is not None:
        text += f", this patch is transaction {tx.id} ({tx.return_code or '?'})"
    return text


def _change(c: Any) -> str:
    return f"{c.name}.{c.arch}: {c.from_evr or '(none)'} -> {c.to_evr or '(removed)'}" \
           f" ({c.action})"


def reboot_line(out: Outcome) -> str:
    d = out.reboot
    if d is None:
        if out.failure:
            return "not considered: the patch failed"
        if out.rollback and out.rollback.ran:
            return "not done: the transaction was rolled back"
        return "not considered"
    why = f" ({', '.join(d.needed)})"
    if not d.needed:
        suggested = [a.id for a in out.advisories_applied() if a.reboot_suggested]
        return "not needed" + (f" by the core packages or needs-restarting (advisory "
                               f"{', '.join(suggested)} suggests one)" if suggested else "")
    if out.dry_run:
        return (f"would be needed{why}: policy {d.policy} "
                + ("would reboot" if d.reboot else f"would not reboot ({d.why_not})"))
    if out.installroot is not None and not out.host_actions:
        return f"the target needs a reboot{why}; nothing on this host is rebooted " \
               "with --installroot"
    if out.reboot_error:
        return f"FAILED{why}: {out.reboot_error}; reboot by hand"
    if out.reboot_requested:
        return f"rebooting now{why} with: {shlex.join(out.reboot_command)}; steward reports when " \
               "the machine is back"
    return f"PENDING{why}, not done: {d.why_not or out.reboot_note}"


def _health(out: Outcome) -> dict[str, Any]:
    b, a = out.health_before, out.health_after
    return {"before": f"{b.counts()} ({b.seconds:.1f} s)" if b else "not checked",
            "after": f"{a.counts()} ({a.seconds:.1f} s)" if a else
            ("not checked: nothing was applied" if out.transaction is None or out.dry_run
             else "not checked"),
            "worse": [str(s) for s in out.worse], "better": [str(s) for s in out.better]}


def _rollback(r: Rollback) -> dict[str, Any]:
    if not r.ran:
        done = f"not run ({r.why_not}): run it by hand to undo the patch"
    elif r.error:
        done = f"run: {r.error}"
    else:
        tid = r.transaction.id if r.transaction else None
        done = f"run: transaction {tid}" if tid is not None else "run"
    changes = [_change(c) for c in (r.transaction.changes if r.transaction else ())]
    health = ""
    if r.health is not None:
        health = f"{r.health.counts()}: " + ("recovered" if not r.still_worse else
                                             "NOT recovered: " + "; ".join(
                                                 str(s) for s in r.still_worse))
    return {"command": r.command, "ran": r.ran, "done": done, "changes": changes,
            "health": health, "recovered": r.recovered}


def _taken(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


def render(out: Outcome, template_dir: str | Path | None, language: str = "en", *,
           now: float) -> tuple[str, str, str]:
    return ReportTemplates(template_dir, language).render_report(view(out, now))


def store(out: Outcome, state_dir: Path, text: str, stream: TextIO, now: float) -> None:
    """patch/last-report.json, what ``steward patch last`` (and the Cockpit page) reads; not
    for a dry run, which changes nothing, steward's state included."""
    from patch import lastreport

    if out.dry_run:
        return

    try:
        lastreport.write(state_dir, lastreport.document(out, view(out, now), text))
    except OSError as e:
        stream.write(f"the report for the Cockpit page could not be written: {e.filename}: "
                     f"{e.strerror or e}\n")


def publish(out: Outcome, config: Config, state_dir: Path, *, clock: Clock,
            stream: TextIO | None = None) -> None:
    """Print the report and mail it (queued first; delivered now if a relay takes it). Sets
    ``out.delivered``: None when no recipients are configured."""
    from agent.notify.commands import mail_now

    stream = stream or sys.stdout
    opts = config.email
    now = clock.now()
    subject, text, html = render(out, opts.template_dir, opts.language, now=now)
    stream.write(text)
    store(out, state_dir, text, stream, now)
    if not opts.enabled:
        out.delivered = None
        stream.write("report not mailed: no [notify.email] recipients configured\n")
        stream.flush()
        return
    msg = build_message(subject, text, html, sender=opts.sender, kind="patch",
                        to=[address for address, _ in opts.to], date=now)
    out.delivered = mail_now(msg, opts, state_dir, out.host, stream)
