"""The config tables besides ``[checks.*]``: ``[restart]``, ``[alerts]``, ``[notify.email]``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.config.schema import BOOLEAN, TEXT, Parser, choice, listing, number, option, table
from agent.entrypoints import entry_points
from agent.events import KINDS, Event
from agent.quote import quote
from agent.status import Status

# min_severity values: the one severity order (agent.model.Status.severity), OK left out
SEVERITIES = tuple(s.name for s in sorted(Status, key=lambda s: s.severity) if s.severity)
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")


@dataclass(frozen=True)
class RestartOptions:
    """``[restart]``: how ``steward run`` restarts failed units (systemd's Restart= goes first)."""

    TABLE: ClassVar[str] = "restart"

    enabled: bool = option(True, BOOLEAN, "restart failed units and units whose probe fails")
    budget: int = option(3, number(1, 100, integer=True), "restarts per unit within window")
    window: float = option(900.0, number(60, 86400), "seconds the restart budget counts over")
    backoff: float = option(30.0, number(0, 3600), "seconds before retrying a restart that "
                            "did not hold (the unit never came up OK); doubles after each")
    grace: float = option(20.0, number(0, 3600), "seconds after a restart before the unit is "
                          "judged again")


@dataclass(frozen=True)
class Route:
    """Which events reach one action: kinds (all when empty) at or above a severity (a
    recovery counts as severe as the problem it ends; a digest lists everything not OK)."""

    min_severity: Status = Status.WARN
    kinds: frozenset[str] = frozenset()
    held: bool = False  # also the changes the cooldown holds back (the journal, a log)

    def as_table(self) -> dict[str, Any]:
        """As it would be written in the config (``steward config show``)."""
        return {"min_severity": self.min_severity.name, **(
            {"kinds": sorted(self.kinds)} if self.kinds else {}), "held": self.held}

    def takes(self, event: Event) -> bool:
        if (self.kinds and event.kind not in self.kinds) or (event.held and not self.held):
            return False
        if event.kind == "digest" or (event.status is Status.OK and event.kind != "recovery"):
            return True  # a digest lists all that is not OK; news that is OK is news
        return event.severity >= self.min_severity.severity


ROUTE_KEYS = ("min_severity", "kinds", "held")


def _route(v: Any) -> Route:
    if not isinstance(v, Mapping) or set(v) - set(ROUTE_KEYS):
        raise ValueError(f"not a table of {', '.join(ROUTE_KEYS)}")
    sev = v.get("min_severity", "WARN")
    if sev not in SEVERITIES:
        raise ValueError(f"min_severity {quote(sev)} is not one of {', '.join(SEVERITIES)}")
    kinds = v.get("kinds", [])
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise ValueError("kinds is not a list of event kinds")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"kind {quote(unknown[0])} is not one of {', '.join(KINDS)}")
    held = v.get("held", False)
    if not isinstance(held, bool):
        raise ValueError("held is not true or false")
    return Route(Status[str(sev)], frozenset(kinds), held)


def _action_name(v: Any) -> str:
    names = sorted({ep.name for ep in entry_points("steward.actions")})
    if v not in names:
        raise ValueError(f"no action {quote(v)} is installed (installed: {', '.join(names)})")
    return str(v)


def _address(v: Any) -> str:
    if not isinstance(v, str) or not _ADDRESS.match(v):
        raise ValueError("not an e-mail address")
    return v


ADDRESS = Parser(_address, "an e-mail address like admin@example.com")


def _recipient(v: Any) -> tuple[str, str]:
    """``"a@b"`` or ``{ address = "a@b", min_severity = "CRIT" }`` -> (address, severity)."""
    if isinstance(v, str):
        return (_address(v), "WARN")
    if not isinstance(v, Mapping) or set(v) - {"address", "min_severity"} or "address" not in v:
        raise ValueError("not an address or a table with address and min_severity")
    sev = v.get("min_severity", "WARN")
    if sev not in SEVERITIES:
        raise ValueError(f"min_severity {quote(sev)} is not one of {', '.join(SEVERITIES)}")
    return (_address(v["address"]), str(sev))


def _relay(v: Any) -> str:
    from agent.notify.smtp import parse_relay  # the notify package imports config: load late

    if not isinstance(v, str):
        raise ValueError("not a string")
    parse_relay(v)
    return v


def _path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError("not an absolute path")
    return v


def _clock_time(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", v):
        raise ValueError("not a time of day HH:MM")
    return v


CLOCK_TIME = Parser(_clock_time, '"HH:MM"')
COOLDOWN = number(0, 86400)
REMINDER = number(0, 7 * 86400)
REMINDER_MAX = number(60, 30 * 86400)


@dataclass(frozen=True)
class AlertOptions:
    """``[alerts]``: what the administrator is told, and through which action (the policy's
    notices: cooldown, flapping, reminders, digest; then the route of each action)."""

    TABLE: ClassVar[str] = "alerts"

    cooldown: float = option(900.0, COOLDOWN, "a check that changes again within this many "
                             "seconds of its last problem notice waits for the next")
    reminder: float = option(3600.0, REMINDER, "seconds until the first reminder of what "
                             "stays failing (doubles; 0: none)")
    reminder_max: float = option(86400.0, REMINDER_MAX, "longest wait between reminders")
    digest: str | None = option(None, CLOCK_TIME, "time of day for a daily digest of what is "
                                "still not OK")
    route: Mapping[str, Route] | None = option(
        None, table(Parser(_action_name, "an installed action's name"),
                  Parser(_route, '{ min_severity = "WARN" | "UNKNOWN" | "CRIT", kinds = '
                         '["problem", ...], held = false }')),
        "which events each action takes, e.g. { email = { min_severity = \"CRIT\" } }; an "
        "action not named takes what it says (the journal: everything, held-back changes "
        "too; the others: every event told)")
    action_timeout: float = option(30.0, number(1, 3600), "seconds one call of an action may "
                                   "take before it is reported as hanging (UNKNOWN)")


PATH = Parser(_path, "an absolute path")


def _secret(v: Any) -> str:
    from agent.config.trust import secret_problem

    path = _path(v)
    found = secret_problem(path)
    if found:
        problem, remedy = found
        raise ValueError(problem + (f"; fix: {remedy}" if remedy else ""))
    return path


SECRET = Parser(_secret, "the absolute path of a non-empty file of mode 0600 owned by root "
                "(or the user steward runs as), in directories only they can write")


@dataclass(frozen=True)
class EmailOptions:
    """``[notify.email]``: who hears about problems, and through which relays."""

    TABLE: ClassVar[str] = "notify.email"

    to: tuple[tuple[str, str], ...] = option(
        (), listing(Parser(_recipient, '"admin@example.com" or { address = "...", '
                           'min_severity = "WARN" | "UNKNOWN" | "CRIT" }')),
        "recipients; empty: alerts go to the journal only")
    sender: str = option("steward@localhost", ADDRESS, "the From address", key="from")
    relays: tuple[str, ...] = option(
        ("smtp://localhost:25",), listing(Parser(_relay, '"smtp://host[:port]", '
                                                 '"smtp+starttls://host[:port]" or '
                                                 '"smtps://host[:port]"')),
        "relays tried in order until one accepts")
    username: str | None = option(None, TEXT, "AUTH user (needs TLS)")
    password_file: str | None = option(None, SECRET, "file with the AUTH password, mode 0600, "
                                       "read at each send")
    ca_file: str | None = option(None, PATH, "CA bundle to verify relays (default: the "
                                 "system's)")
    timeout: float = option(30.0, number(1, 600), "seconds for each SMTP step")
    group_window: float = option(30.0, number(0, 3600), "seconds alerts are gathered into "
                                 "one mail")
    # Moved to [alerts] (they hold for every action); still read here when [alerts] leaves
    # them unset (agent.config.Config.alerts), so older configs keep working.
    cooldown: float | None = option(None, COOLDOWN, "moved to [alerts] cooldown")
    reminder: float | None = option(None, REMINDER, "moved to [alerts] reminder")
    reminder_max: float | None = option(None, REMINDER_MAX, "moved to [alerts] reminder_max")
    digest: str | None = option(None, CLOCK_TIME, "moved to [alerts] digest")
    template_dir: str = option("/etc/steward/templates", PATH, "templates here override the "
                               "built-in ones")
    retry_max: float = option(1800.0, number(10, 86400), "longest wait between delivery "
                              "attempts of a queued mail")
    language: str = option("en", choice("en", "ja"), "language of the alert and patch-report "
                           "mails: en (English) or ja (Japanese)")

    def __post_init__(self) -> None:
        if self.username is not None and self.password_file is None:
            raise ValueError("username is set but password_file is not")
        if self.username is not None and any(r.startswith("smtp://") for r in self.relays):
            raise ValueError("username is set but a relay is plain smtp://: the password "
                             "would cross the network unencrypted; use smtp+starttls:// or "
                             "smtps://")

    @property
    def enabled(self) -> bool:
        return bool(self.to)
