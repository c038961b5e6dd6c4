"""Nagios plugin output: one status line with perfdata, then one long-output line per result.

Perfdata follows the plugin guidelines: ``'label'=value[UOM];warn;crit;min;max``.
"""

from __future__ import annotations

from agent.model import Metric, Result, Status
from agent.runner import Report


def number(v: float) -> str:
    """A perfdata number: plain decimal, never exponent notation."""
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


def perfdata(result: Result, m: Metric) -> str:
    label = f"{result.check} {m.name}".replace("'", "''").replace("=", "_")
    tail = [m.warn, m.crit, "" if m.min is None else number(m.min),
            "" if m.max is None else number(m.max)]
    while tail and not tail[-1]:
        tail.pop()
    return f"'{label}'={number(m.value)}{m.uom}" + "".join(";" + t for t in tail)


def render(report: Report, host: str, tty: bool) -> str:
    rows = report.ordered()
    counts = report.counts()
    status = report.status
    bad = [r for r in rows if r.status is not Status.OK]
    if bad:
        tally = ", ".join(f"{counts[s]} {s.long_name.lower()}"
                          for s in (Status.CRIT, Status.WARN, Status.UNKNOWN) if counts[s])
        head = f"{tally} of {len(rows)}: " + "; ".join(f"{r.check} {r.summary}" for r in bad[:3])
        if len(bad) > 3:
            head += f"; and {len(bad) - 3} more"
    else:
        head = f"{len(rows)} checks OK on {host}"
    perf = " ".join(perfdata(r, m) for r in rows for m in r.metrics)
    lines = [f"STEWARD {status.long_name} - {head.replace('|', '/')}" + (f" | {perf}" if perf
                                                                          else "")]
    lines.extend(f"[{r.status.long_name}] {r.check}: {r.summary}".replace("|", "/") for r in rows)
    return "\n".join(lines) + "\n"
