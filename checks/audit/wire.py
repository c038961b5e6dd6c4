"""What the daemon and the audit's child process (checks.audit.child) say to each other:
stdin is one JSON object ``{"sysroot": "/", "options": {field: value}}``; stdout is a JSON
array of results as ``steward check --format json`` writes them. Apart from the child so that
the audit package can use it without importing the child (which imports the package)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agent.model import Metric, Result, Status


def request(sysroot: str, options: Any) -> str:
    return json.dumps({"sysroot": sysroot, "options": dataclasses.asdict(options)})


def results(text: str) -> list[Result]:
    """The child's answer as Results; ValueError when it is not one."""
    out = []
    for d in json.loads(text):
        metrics = tuple(Metric(m["name"], m["value"], m["uom"], m["warn"], m["crit"], m["min"],
                               m["max"]) for m in d["metrics"])
        out.append(Result(d["check"], Status[d["status"]], d["summary"], details=d["details"],
                          metrics=metrics, remedy=d["remedy"], restartable=False))
    return out
