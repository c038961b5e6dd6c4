"""The config tables besides ``[checks.*]``: ``[restart]`` and ``[notify.email]``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.config.schema import BOOLEAN, TEXT, Parser, choice, listing, number, option
from agent.model import Status
from agent.quote import quote

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
    cooldown: float = option(900.0, number(0, 86400), "a check that changes again within "
                             "this many seconds of its last problem mail waits for the next")
    reminder: float = option(3600.0, number(0, 7 * 86400), "seconds until the first "
                             "reminder of what stays failing (doubles; 0: none)")
    reminder_max: float = option(86400.0, number(60, 30 * 86400), "longest wait between "
                                 "reminders")
    digest: str | None = option(None, Parser(_clock_time, '"HH:MM"'), "time of day for a "
                                "daily digest of what is still not OK")
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
