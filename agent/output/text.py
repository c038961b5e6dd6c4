"""Plain text for a person: worst first, remedies under problems, colour only on a TTY."""

from __future__ import annotations

import os

from agent.model import Status
from agent.runner import Report

_COLOUR = {Status.OK: "\033[32m", Status.WARN: "\033[33m", Status.CRIT: "\033[1;31m",
           Status.UNKNOWN: "\033[35m"}
_RESET = "\033[0m"


def render(report: Report, host: str, tty: bool) -> str:
    colour = tty and not os.environ.get("NO_COLOR")
    rows = report.ordered()
    width = min(max((len(r.check) for r in rows), default=0), 40)
    lines = []
    for r in rows:
        tag = f"{r.status.name:<7}"
        if colour:
            tag = f"{_COLOUR[r.status]}{tag}{_RESET}"
        lines.append(f"{tag} {r.check:<{width}}  {r.summary}")
        if r.status is not Status.OK:
            lines.extend(f"{'':8} {line}" for line in r.details.splitlines() if line.strip())
            if r.remedy:
                lines.append(f"{'':8} remedy: {r.remedy}")
    counts = report.counts()
    tally = ", ".join(f"{counts[s]} {s.name}" for s in Status if counts[s])
    lines.append(f"{host}: {report.status.name} - {len(rows)} results"
                 f"{': ' + tally if tally else ''} ({report.duration:.2f} s)")
    return "\n".join(lines) + "\n"
