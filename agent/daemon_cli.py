"""Sub-commands around the daemon: ``run``, ``status``, ``maintenance``, ``reset``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.errors import UsageError
from agent.memory import Maintenance
from agent.state import StateDir

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_MAINTENANCE = "1h"


def seconds(text: str) -> float:
    m = DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--for {text!r}: not a duration (accepted: a positive number with "
                         "s, m, h or d, e.g. 90s, 30m, 2h, 1d)")
    return float(m.group(1)) * UNITS[m.group(2)]


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    r = sub.add_parser("run", help="the supervisor daemon (run it from steward.service)",
                       description="Run every check at its interval, restart what fails "
                       "(leaving units that systemd is restarting to systemd), alert on "
                       "changes and recoveries. Talks sd_notify when started by systemd. "
                       "SIGHUP reloads the config; a bad new config is rejected and the "
                       "old one keeps running.")
    common(r)
    s = sub.add_parser("status", help="what the running daemon sees now",
                       description="What the daemon sees now: each check's status and since "
                       "when, restarts spent per unit, inhibited and escalated checks, "
                       "maintenance. Exit 0 if the daemon runs, 3 if it does not.")
    common(s)
    s.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for scripts (the same as --json; "
                   "schema: agent/output/status.schema.json)")
    s.add_argument("--json", dest="format", action="store_const", const="json",
                   help=argparse.SUPPRESS)
    m = sub.add_parser("maintenance", help="suppress actions and alerts for a while",
                       description="Maintenance mode: while on, steward neither restarts nor "
                       "alerts, for the whole machine or for the units named.")
    common(m)
    modes = m.add_subparsers(dest="mode", metavar="on|off")
    modes.required = True
    on = modes.add_parser("on", help="start maintenance", description="Start maintenance.")
    off = modes.add_parser("off", help="end maintenance", description="End maintenance.")
    for p in (on, off):
        common(p)
        p.add_argument("--format", choices=("text", "json"), default="text",
                       help="json: print the maintenance now in force (as in steward status "
                       "--format json)")
        p.add_argument("units", nargs="*", metavar="UNIT",
                       help="only these units (default: the whole machine)")
    on.add_argument("--for", dest="duration", default=DEFAULT_MAINTENANCE, metavar="DURATION",
                    help=f"how long, e.g. 30m, 2h (default {DEFAULT_MAINTENANCE}); it ends "
                    "by itself so a forgotten maintenance does not silence steward for good")
    n = sub.add_parser("notify", help="test or flush e-mail notification",
                       description="E-mail notification: 'test' sends a test mail through the "
                       "configured relays and reports each relay's answer (exit 1 when none "
                       "accepted it: it stays queued); 'flush' delivers what is queued now "
                       "(exit 1 if anything is left).")
    common(n)
    acts = n.add_subparsers(dest="notify_command", metavar="test|flush")
    acts.required = True
    for name, text in (("test", "send a test mail now"), ("flush", "deliver the queue now"),
                       ("outbox", "list the recipients and the mail waiting in the outbox")):
        q = acts.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        common(q)
        if name == "outbox":
            q.add_argument("--format", choices=("text", "json"), default="text",
                           help="json for scripts (schema: agent/output/outbox.schema.json)")
    t = sub.add_parser("reset", help="forget a unit's restarts and escalation",
                       description="Clear a unit's restart budget and escalation, so steward "
                       "restarts it again when it fails (after you fixed the cause).")
    common(t)
    t.add_argument("unit", metavar="UNIT")


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"steward" in cmdline or b"agent" in cmdline


def cmd_status(state: StateDir, as_json: bool) -> int:
    """``as_json``: the document of agent/output/status.schema.json."""
    status = state.read_status()
    running = bool(status) and _alive(int(status.get("pid", 0)))  # type: ignore[union-attr]
    if as_json:
        print(json.dumps({"running": running, **(status or {})}, indent=1))
        return 0 if running else 3
    if not status:
        print(f"steward run has not written any status in {state.path}")
        return 3
    print(f"steward run: {'running, pid ' + str(status['pid']) if running else 'NOT RUNNING'}"
          f"; config {status['config']}; unit changes seen by {status['watch']}")
    maint = status["maintenance"]
    if maint["active"]:
        scope = "whole machine until " + _when(maint["until"]) if maint["until"] else \
            ", ".join(f"{u} until {_when(t)}" for u, t in maint["units"].items())
        print(f"maintenance: {scope}")
    for cid, c in sorted(status["checks"].items(), key=lambda kv: (kv[1]["status"] == "OK",
                                                                   kv[0])):
        extra = " [inhibited by " + c["inhibited_by"] + "]" if c["inhibited_by"] else ""
        extra += " [maintenance]" if c["maintenance"] else ""
        print(f"{c['status']:<7} {cid:<28} since {_when(c['since'])}  {c['summary']}{extra}")
    patch = status.get("patch") or {}
    if patch.get("schedule"):
        print(f"patch window: {patch['schedule']}; next start {patch.get('next_start') or '-'}")
    for unit, u in status["units"].items():
        line = f"restarts of {unit}: {u['restarts']} of {u['budget']} in the window"
        if u["last_action"]:
            line += f"; last: {u['last_action']}"
        if u["escalated"]:
            line += f"; GAVE UP: {u['escalated']} (steward reset {unit})"
        print(line)
    return 0 if running else 3


def cmd_maintenance(state: StateDir, mode: str, units: list[str], duration: str,
                    fmt: str = "text") -> int:
    state.ensure()
    now = state.clock.now()
    current = state.maintenance()
    m = Maintenance(current.until, {u: t for u, t in current.units.items() if t > now})
    if mode == "on":
        until = now + seconds(duration)
        if units:
            m.units.update(dict.fromkeys(units, until))
        else:
            m.until = until
        what = ", ".join(units) or "the whole machine"
        said = f"maintenance on for {what} until {_when(until)}"
    else:
        for u in units:
            m.units.pop(u, None)
        if not units:
            m = Maintenance()
        said = f"maintenance off for {', '.join(units) or 'everything'}"
    state.set_maintenance(m)
    if fmt == "json":
        print(json.dumps({"until": m.until, "units": m.units, "active": m.active(now)}))
    else:
        print(said)
    return 0


def cmd_reset(state: StateDir, unit: str, wait: float = 10.0) -> int:
    state.ensure()
    path = state.request_reset(unit)
    deadline = time.monotonic() + wait
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    if path.exists():
        print(f"reset of {unit} queued; steward run is not picking it up now (is it running?)",
              file=sys.stderr)
        return 1
    print(f"reset of {unit} done: steward will restart it again when it fails")
    return 0
