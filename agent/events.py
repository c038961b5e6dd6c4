"""The one event type that leaves the policy for every action (journal, e-mail, webhook, a
third party's): what changed, the result, since when, and the hints for a digest or repeat.

The status is the Status enum all the way; on disk and on the wire it is its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.model import Status

# kind: problem | recovery | restart | escalation | reminder | digest | test, or what a
# source or the daemon says: config | patch | usb | source | action


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

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise TypeError(f"event {self.check!r}: status {self.status!r} is not a Status")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.name, "actions": list(self.actions)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**fields, "status": Status[str(data["status"])],
                      "actions": tuple(data.get("actions", ()))})


def at_least(status: Status, minimum: str | Status) -> bool:
    """Whether ``status`` is as severe as ``minimum`` (a Status or its name), in the one
    severity order: OK < WARN < UNKNOWN < CRIT."""
    floor = minimum if isinstance(minimum, Status) else Status[minimum]
    return status.severity >= floor.severity
