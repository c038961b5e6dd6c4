"""JSON for scripts; the schema (report.schema.json beside this file) is a stable interface."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from agent import __version__
from agent.model import Result
from agent.runner import Report

SCHEMA_VERSION = 1


def result_dict(r: Result) -> dict[str, Any]:
    return {
        "check": r.check,
        "status": r.status.name,
        "code": int(r.status),
        "summary": r.summary,
        "details": r.details,
        "remedy": r.remedy,
        "duration_s": r.duration,
        "metrics": [{"name": m.name, "value": m.value, "uom": m.uom, "warn": m.warn,
                     "crit": m.crit, "min": m.min, "max": m.max} for m in r.metrics],
    }


def render(report: Report, host: str, tty: bool) -> str:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "steward_version": __version__,
        "host": host,
        "started": datetime.fromtimestamp(report.started, timezone.utc)
        .isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(report.duration, 4),
        "status": report.status.name,
        "exit_code": int(report.status),
        "counts": {s.name: n for s, n in report.counts().items()},
        "results": [result_dict(r) for r in report.ordered()],
    }
    return json.dumps(doc, indent=2 if tty else None) + "\n"
