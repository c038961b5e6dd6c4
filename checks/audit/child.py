"""The audit in a child process, for ``steward run``: the rule families (and what they import)
load there and go away with it, so the long-running daemon stays small.

Protocol: checks.audit.wire."""

from __future__ import annotations

import json
import sys
from typing import Any


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
