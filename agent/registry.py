"""The plugin registry: check classes declared as entry points, never folder scans (actions:
agent.notify; sources: agent.sources; commands: agent.commands).

A plugin that fails to load is kept as a failure with its error; the runner turns it into an
UNKNOWN result, so a broken plugin is never a silent skip.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.entrypoints import EntryPoint, entry_points
from agent.model import Check

log = logging.getLogger(__name__)

CHECKS = "steward.checks"


@dataclass
class Registry:
    checks: dict[str, type[Check]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # "group:name" -> reason
    skipped: set[str] = field(default_factory=set)  # check plugins not loaded on purpose

    @property
    def unloaded_checks(self) -> frozenset[str]:
        """Check plugins whose config tables are kept unvalidated: broken or skipped."""
        return self.broken_checks | self.skipped

    @property
    def broken_checks(self) -> frozenset[str]:
        return frozenset(k.split(":", 1)[1] for k in self.failures if k.startswith("check:"))


def _load(ep: EntryPoint, base: type[Any], kind: str, reg: Registry) -> type[Any] | None:
    try:
        obj = ep.load()
    except Exception as e:  # any import failure is the plugin's problem, reported loudly
        reg.failures[f"{kind}:{ep.name}"] = f"cannot load {ep.value}: {type(e).__name__}: {e}"
        log.error("%s plugin %s failed to load: %s", kind, ep.name, e)
        return None
    if not (isinstance(obj, type) and issubclass(obj, base)) or (
            getattr(obj, "name", None) != ep.name):
        reg.failures[f"{kind}:{ep.name}"] = (
            f"{ep.value} is not a {base.__name__} subclass named {ep.name!r}")
        log.error("%s plugin %s is malformed", kind, ep.name)
        return None
    return obj


def discover(wanted: Callable[[str], bool] | None = None) -> Registry:
    """Load the plugins; with ``wanted``, only the check plugins it accepts (``--only``: a
    one-check run need not import every plugin's libraries). The others are listed in
    ``skipped``, so their config tables are still recognised."""
    reg = Registry()
    for ep in entry_points(CHECKS):
        if wanted is not None and not wanted(ep.name):
            reg.skipped.add(ep.name)
            continue
        cls = _load(ep, Check, "check", reg)
        if cls is not None:
            reg.checks[ep.name] = cls
    return reg
