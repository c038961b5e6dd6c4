"""The plugin registry: check and action classes declared as entry points, never folder scans.

A plugin that fails to load is kept as a failure with its error; the runner turns it into an
UNKNOWN result, so a broken plugin is never a silent skip.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.model import Action, Check

log = logging.getLogger(__name__)

CHECKS = "steward.checks"
ACTIONS = "steward.actions"


@dataclass
class Registry:
    checks: dict[str, type[Check]] = field(default_factory=dict)
    actions: dict[str, type[Action]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # "group:name" -> reason
    skipped: set[str] = field(default_factory=set)  # check plugins not loaded on purpose

    @property
    def unloaded_checks(self) -> frozenset[str]:
        """Check plugins whose config tables are kept unvalidated: broken or skipped."""
        return self.broken_checks | self.skipped

    @property
    def broken_checks(self) -> frozenset[str]:
        return frozenset(k.split(":", 1)[1] for k in self.failures if k.startswith("check:"))


def _entry_points(group: str) -> list[Any]:
    eps = md.entry_points()
    if hasattr(eps, "select"):
        found = list(eps.select(group=group))
    else:  # pragma: no cover - Python 3.9 returns a dict of groups
        found = list(eps.get(group, []))
    unique: dict[str, Any] = {}
    for ep in found:
        unique.setdefault(ep.name, ep)  # an editable install can list a plugin twice
    return sorted(unique.values(), key=lambda ep: str(ep.name))


def _load(ep: Any, base: type[Any], kind: str, reg: Registry) -> type[Any] | None:
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
    for ep in _entry_points(CHECKS):
        if wanted is not None and not wanted(ep.name):
            reg.skipped.add(ep.name)
            continue
        cls = _load(ep, Check, "check", reg)
        if cls is not None:
            reg.checks[ep.name] = cls
    for ep in _entry_points(ACTIONS):
        acls = _load(ep, Action, "action", reg)
        if acls is not None:
            reg.actions[ep.name] = acls
    return reg
