"""Prometheus text exposition format, for node_exporter's textfile collector."""

from __future__ import annotations

import re
from collections import defaultdict

from agent.model import Metric, Result
from agent.runner import Report

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(check: str, m: Metric) -> str:
    plugin = check.split(":", 1)[0]
    return _UNSAFE.sub("_", f"steward_{plugin}_{m.name}")


def render(report: Report, host: str, tty: bool) -> str:
    out: list[str] = []

    def family(name: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.extend(f"{name}{labels} {value!r}" for labels, value in samples)

    rows = report.ordered()
    family("steward_check_status", "Check status: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.",
           [(f'{{check="{_label(r.check)}"}}', float(r.status)) for r in rows])
    family("steward_check_duration_seconds", "Seconds the check that produced the result ran.",
           [(f'{{check="{_label(r.check)}"}}', r.duration) for r in rows])
    metrics: dict[str, list[tuple[Result, Metric]]] = defaultdict(list)
    for r in rows:
        for m in r.metrics:
            metrics[_family(r.check, m)].append((r, m))
    for name in sorted(metrics):
        pairs = metrics[name]
        uom = pairs[0][1].uom
        family(name, f"steward metric {pairs[0][1].name}" + (f" ({uom})" if uom else "") + ".",
               [(f'{{check="{_label(r.check)}"}}', float(m.value)) for r, m in pairs])
    family("steward_status", "Worst status of the run: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.",
           [("", float(report.status))])
    family("steward_last_run_timestamp_seconds", "When the run started (Unix time).",
           [("", float(report.started))])
    family("steward_last_run_duration_seconds", "Wall time of the whole run.",
           [("", float(report.duration))])
    return "\n".join(out) + "\n"
