"""Entry points of the distributions on sys.path, read straight from their entry_points.txt:
how every plugin group (checks, actions, sources, commands, config sections, audit families)
is found, never by scanning folders."""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any


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


def _distributions() -> list[tuple[str, str]]:
    """(normalised name, dist-info or egg-info folder) of each distribution on sys.path, the
    first copy of each winning (as importlib.metadata does)."""
    found: dict[str, str] = {}
    for base in sys.path:
        try:
            entries = sorted(os.scandir(base or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            m = _DIST.match(entry.name)
            if m:
                found.setdefault(m.group(1).lower().replace("_", "-"), entry.path)
    return list(found.items())


def entry_points(group: str) -> list[EntryPoint]:
    """The group's entry points of the distributions on sys.path. Read straight from
    entry_points.txt: importlib.metadata would cost the daemon 4.5 MB of memory (email,
    zipfile, csv...)."""
    found: dict[str, EntryPoint] = {}
    for _, path in _distributions():
        try:
            with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
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


def metadata_dir(dist: str) -> str | None:
    """The dist-info (or egg-info) folder of distribution ``dist`` that wins on sys.path: a
    copy of steward elsewhere (the rescue system) takes its entry_points.txt along."""
    want = dist.lower().replace("_", "-")
    return next((path for name, path in _distributions() if name == want), None)
