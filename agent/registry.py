"""The plugin registry: check and action classes declared as entry points, never folder scans.

A plugin that fails to load is kept as a failure with its error; the runner turns it into an
UNKNOWN result, so a broken plugin is never a silent skip.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
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


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # "package.module:Class"

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in attr.split("[")[0].strip().split(".") if attr else ():
            obj = getattr(obj, part)
        return obj


_DIST = re.compile(r"^([^-]+)-.*\.(dist-info|egg-info)$")


def _entry_points(group: str) -> list[EntryPoint]:
    """The group's entry points of the distributions on sys.path, the first copy of each
    distribution winning (as importlib.metadata does). Read straight from entry_points.txt:
    importlib.metadata would cost the daemon 4.5 MB of memory (email, zipfile, csv...)."""
    found: dict[str, EntryPoint] = {}
    dists: set[str] = set()
    for base in sys.path:
        try:
            entries = sorted(os.scandir(base or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            m = _DIST.match(entry.name)
            if not m or m.group(1).lower().replace("_", "-") in dists:
                continue
            dists.add(m.group(1).lower().replace("_", "-"))
            try:
                with open(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            for name, value in _group(text, group):
                found.setdefault(name, EntryPoint(name, value))
    return sorted(found.values(), key=lambda ep: ep.name)


def _group(text: str, group: str) -> list[tuple[str, str]]:
    """``name = value`` lines of ``[group]`` in an entry_points.txt (an INI file)."""
    out, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif current == group and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            out.append((name.strip(), value.strip()))
    return out


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
