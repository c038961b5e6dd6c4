"""The webhook's Alertmanager mode: steward's events as Alertmanager API v2 postableAlerts,
with the life cycle Alertmanager expects of a client.

An alert is known to Alertmanager by its labels, so they name the problem and nothing that
changes while it lasts: ``alertname`` (steward_<plugin>), ``check``, ``instance`` (host),
``job`` and ``severity``; what happened (``kind``, the summary, the remedy, what steward did)
are annotations. A check's alert that changes severity ends the old alert and starts the new
one; its recovery ends the alert it has (endsAt now). Alertmanager resolves an alert that is
not posted again within its ``resolve_timeout`` (5 min by default), so what is firing is
posted again every ``RESEND`` s, as Prometheus does, and is kept on disk
(``<state>/webhook-firing.json``) so that a restarted steward keeps it firing. Events that are
no check's state (a patch report, a rejected config, a test) are posted once and left to
resolve_timeout.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.events import Event
from agent.fileio import read_json, write_atomic
from agent.model import Status

log = logging.getLogger(__name__)
RESEND = 60.0
STATEFUL = ("problem", "recovery", "reminder", "escalation", "restart", "digest")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def labels(check: str, host: str, status: Status) -> dict[str, str]:
    plugin = check.split(":", 1)[0]
    return {"alertname": f"steward_{plugin}".replace("-", "_"), "check": check,
            "instance": host, "severity": status.name.lower(), "job": "steward"}


def alert(event: Event, host: str, now: float) -> dict[str, Any]:
    status = (event.was or Status.CRIT) if event.status is Status.OK else event.status
    return {"labels": labels(event.check, host, status),
            "annotations": {"summary": event.summary, "kind": event.kind,
                            **({"description": event.details} if event.details else {}),
                            **({"remedy": event.remedy} if event.remedy else {}),
                            **({"actions": "; ".join(event.actions)} if event.actions else {})},
            "startsAt": iso(event.since or now)}


class Firing:
    """The alerts steward has firing at Alertmanager, by check, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alerts: dict[str, dict[str, Any]] = {}
        try:
            data = read_json(path)
            if isinstance(data, dict):
                self.alerts = {k: v for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.error("%s unreadable (%s): what fires is posted again as it changes", path, e)

    def body(self, event: Event, host: str, now: float) -> list[dict[str, Any]]:
        """What to post for ``event``; the record of what fires follows it."""
        new = alert(event, host, now)
        if event.kind not in STATEFUL:
            return [new] if event.status is not Status.OK else []
        out = []
        old = self.alerts.get(event.check)
        if event.status is Status.OK:
            ended = dict(old or new)
            ended["endsAt"] = iso(now)
            ended["annotations"] = {**ended.get("annotations", {}), **new["annotations"]}
            out.append(ended)
            self.alerts.pop(event.check, None)
        else:
            if old and old.get("labels") == new["labels"]:
                new["startsAt"] = old.get("startsAt", new["startsAt"])  # the same alert goes on
            elif old:
                out.append({**old, "endsAt": iso(now)})  # the severity changed: that one ends
            out.append(new)
            self.alerts[event.check] = new
        self.save()
        return out

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.alerts, sort_keys=True), 0o600)
