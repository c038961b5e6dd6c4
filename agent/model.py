"""The vocabulary every part of steward speaks: Status (defined in agent.status, which the
configuration builds on too, and handed on here), Metric, Result and Check (the event that
leaves the policy for the actions is agent.events.Event)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from agent.status import Status, worst

if TYPE_CHECKING:
    from agent.config.schema import CheckOptions
    from agent.env import Env

__all__ = ["UOMS", "Check", "Metric", "Result", "Status", "worst"]

# Units of measure the Nagios plugin guidelines allow in perfdata.
UOMS = frozenset({"", "s", "ms", "us", "%", "B", "KB", "MB", "GB", "TB", "c"})


@dataclass(frozen=True)
class Metric:
    """One measured value, enough to render Nagios perfdata and a Prometheus sample."""

    name: str
    value: float
    uom: str = ""
    warn: str = ""  # the Nagios range text that the value was judged against
    crit: str = ""
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.uom not in UOMS:
            raise ValueError(f"metric {self.name!r}: unit {self.uom!r} is not one of "
                             f"{sorted(UOMS)}")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"metric name {self.name!r} must be letters, digits and underscores")
        if not math.isfinite(self.value):
            raise ValueError(f"metric {self.name!r}: value {self.value!r} is not a finite number")


@dataclass(frozen=True)
class Result:
    """What one check found about one thing."""

    check: str  # stable id, e.g. "service:postfix", "disk:/var"
    status: Status
    summary: str  # one line a person reads in a mail subject
    details: str = ""
    metrics: tuple[Metric, ...] = ()
    remedy: str = ""  # what the administrator should do about it
    duration: float = 0.0  # seconds the producing check ran; set by the runner
    # The systemd unit this result is about (a service's own state, or a probe linked to the
    # unit that serves it): what the supervisor may restart.
    unit: str = ""
    # Check ids or globs this result depends on; while one of them fails, this result is
    # inhibited (no action, no alert): a dead named explains failing DNS lookups.
    depends_on: tuple[str, ...] = ()
    # Whether restarting ``unit`` may cure a failure: yes for a dead or hung service, no for
    # findings a restart cannot change (a certificate about to expire, a missing STARTTLS).
    restartable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            raise TypeError(f"result {self.check!r}: status {self.status!r} is not a Status")
        if "\n" in self.summary:
            raise ValueError(f"result {self.check!r}: summary must be one line")


class Check(ABC):
    """Base of every check plugin.

    A plugin class is registered under ``steward.checks`` with its ``name``; its ``Options``
    dataclass is the schema of its ``[checks.<name>]`` table. ``instances`` expands one
    configured plugin into the units the runner schedules (each with its own timeout), and
    ``run`` reads the world through ``env`` and returns Results. Checks never act.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[CheckOptions]]

    def __init__(self, options: CheckOptions, target: str = "") -> None:
        self.options = options
        self.target = target

    @property
    def id(self) -> str:
        return f"{self.name}:{self.target}" if self.target else self.name

    @property
    def timeout(self) -> float:
        return self.options.timeout

    # Plugins resolve in this order, so one may build its defaults on another's (ports on
    # the discovered services).
    resolve_order: ClassVar[int] = 1

    # A check that judges systemd units by their state (the service check): under steward
    # run it runs the moment one of ``watched_units()`` changes (systemd's D-Bus signals),
    # every few seconds when those signals are unavailable, and after every restart. Its
    # results' ``unit`` is the unit that runs the daemon (a wrapper's member), which the
    # supervisor then watches and restarts for every result linked to the service's name.
    follows_units: ClassVar[bool] = False

    def watched_units(self) -> Iterable[str]:
        """The units whose changes call for a run now (``follows_units`` checks)."""
        return ()

    @classmethod
    def resolve(cls, options: Any, env: Env) -> Any:
        """Options with auto-discovered defaults filled in (``steward config show`` prints
        them). Runs once at start-up, before any instance is planned."""
        return options

    @classmethod
    def instances(cls, options: Any, env: Env) -> Iterable[Check]:
        """The schedulable instances of this plugin; one by default. Must be cheap."""
        return [cls(options)]

    @abstractmethod
    def run(self, env: Env) -> Iterable[Result]:
        """Look, and say what was found; exceptions become UNKNOWN in the runner."""

    def result(self, status: Status, summary: str, target: str | None = None,
               **kw: Any) -> Result:
        """A Result whose id is this check's, or ``name:target`` for another target."""
        rid = self.id if target is None else f"{self.name}:{target}"
        return Result(rid, status, summary, **kw)
