"""The audit in a child process, for ``steward run``: the rule families (and what they import)
load there and go away with it, so the long-running daemon stays small.

Protocol: stdin is one JSON object ``{"sysroot": "/", "options": {field: value}}``; stdout is
a JSON array of results as ``steward check --format json`` writes them."""

from __future__ import annotations

import dataclasses
import json
import sys
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


def main() -> None:
    from pathlib import Path

    from agent.output.jsonout import result_dict
    from agent.system.commands import CommandRunner
    from checks.audit import audit, score_result
    from checks.audit.base import Context
    from checks.audit.options import AuditOptions

    req = json.load(sys.stdin)
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in req["options"].items()}
    options = AuditOptions(**fields)
    findings = audit(Context(Path(req["sysroot"]), options, CommandRunner()))
    found = [f.result() for f in findings] + [score_result(findings, options.min_score)]
    json.dump([result_dict(r) for r in found], sys.stdout)


if __name__ == "__main__":
    main()
