"""The last patch report as JSON in the state dir (``patch/last-report.json``, written atomically
each time ``steward patch apply`` reports, by hand or in the patch window), read back by
``steward patch last`` for the Cockpit page: what changed, and health before and after."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import UsageError
from agent.fileio import write_atomic

if TYPE_CHECKING:
    from patch.health import Health, Shift
    from patch.outcome import Outcome

REPORT = "patch/last-report.json"
SCHEMA_VERSION = 1


def _utc(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _health(h: Health | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"status": h.status.name, "counts": h.counts(), "seconds": round(h.seconds, 3),
            "checks": len(h.results)}


def _shift(s: Shift) -> dict[str, Any]:
    return {"check": s.check, "before": s.before.name if s.before is not None else None,
            "after": s.after.name if s.after is not None else None, "summary": s.summary}


def document(out: Outcome, view: dict[str, Any], text: str) -> dict[str, Any]:
    """The last-report.json document (patch-report.schema.json); ``view`` is patch.report's
    template data for the same outcome, ``text`` the report as mailed."""
    return {
        "schema_version": SCHEMA_VERSION, "host": out.host, "status": out.status.name,
        "headline": out.headline(), "problems": out.problems(), "failure": out.failure,
        "started": _utc(out.started), "finished": _utc(out.finished),
        "duration_s": round(out.finished - out.started, 3) if out.finished else None,
        "mode": out.mode, "dry_run": out.dry_run, "installroot": out.installroot,
        "backup": out.backup, "history": view["history"],
        "packages": [{k: p[k] for k in ("name", "arch", "action", "from", "to")}
                     for p in view["packages"]],
        "advisories": [{k: a[k] for k in ("id", "type", "severity", "cves", "title")}
                       for a in view["advisories"]],
        "restarts": view["restarts"], "reboot": view["reboot"],
        "health": {"before": _health(out.health_before), "after": _health(out.health_after),
                   "worse": [_shift(s) for s in out.worse],
                   "better": [_shift(s) for s in out.better]},
        "rollback": view["rollback"], "notes": list(out.notes), "text": text}


def write(state_dir: Path, doc: dict[str, Any]) -> Path:
    path = Path(state_dir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(doc, indent=1) + "\n", 0o600)
    return path


def read(state_dir: Path) -> dict[str, Any]:
    """{"report": the last report or None, "report_file": its path}; a file that is not a
    report is a UsageError naming it (exit 2)."""
    path = Path(state_dir) / REPORT
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "report": None,
                           "report_file": str(path)}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return doc
    except OSError as e:
        raise UsageError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        rep = json.loads(text)
    except ValueError as e:
        raise UsageError(f"{path}: not JSON ({e}); the next patch run rewrites it") from None
    missing = [k for k in ("status", "headline", "started", "health")
               if not isinstance(rep, dict) or k not in rep]
    if missing:
        raise UsageError(f"{path}: not a patch report (no {', '.join(missing)}); the next "
                         "patch run rewrites it")
    doc["report"] = rep
    return doc


def text(doc: dict[str, Any]) -> str:
    """``steward patch last`` for people: the report as it was mailed."""
    rep = doc["report"]
    if rep is None:
        return f"no patch run has reported on this machine yet ({doc['report_file']} does " \
               "not exist)\n"
    return str(rep.get("text") or rep["headline"] + "\n")
