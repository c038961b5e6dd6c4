"""The one event type that leaves the policy for every action (journal, e-mail, webhook, a
third party's): what changed, the result, since when, and the hints for a digest or repeat.

The status is the Status enum all the way; on disk and on the wire it is its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.status import Status

# The kinds the core makes (a source may add its own, e.g. a third party's "heartbeat"):
# a check's confirmed change (problem, recovery), what steward did or gave up on (restart,
# escalation), what the notices policy adds later (reminder, digest), and what the daemon or a
# source says (test, config, patch, usb, source, action).
KINDS = ("problem", "recovery", "restart", "escalation", "reminder", "digest", "test",
         "config", "patch", "usb", "source", "action")


@dataclass(frozen=True)
class Event:
    kind: str
    check: str  # the result id (service:postfix), or the source's (patch:window)
    status: Status
    summary: str
    details: str = ""
    remedy: str = ""
    since: float = 0.0  # unix time the state began; 0 = unknown
    actions: tuple[str, ...] = ()  # what steward did about it (restarts)
    repeats: int = 0  # state changes held back (flapping) since the last word about it
    # A recovery: the worst status said about the problem it ends (None: not known), so that
    # it reaches every action the problem reached and no other.
    was: Status | None = None
    # A change the notices policy holds back (cooldown, flapping): told later, in one word;
    # only an action that keeps a log takes it (its route's ``held``).
    held: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status) or not isinstance(self.was, (Status, type(None))):
            raise TypeError(f"event {self.check!r}: status {self.status!r} is not a Status")

    @property
    def severity(self) -> int:
        """How severe, for routing: a recovery is as severe as the problem it ends (one whose
        problem is not known reaches everyone: better a recovery too many than one lost)."""
        if self.kind == "recovery":
            return max(Status.WARN.severity, (self.was or Status.CRIT).severity)
        return self.status.severity

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.name, "actions": list(self.actions),
                "was": self.was.name if self.was else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        was = data.get("was")
        return cls(**{**fields, "status": Status[str(data["status"])],
                      "actions": tuple(data.get("actions", ())),
                      "was": Status[str(was)] if was else None})
