"""steward.toml: loading, validation into frozen dataclasses, and the built-in default."""

from __future__ import annotations

import logging
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from agent.config.schema import _ABSENT, CheckOptions, ConfigError, build
from agent.config.sections import AlertOptions, EmailOptions, RestartOptions
from agent.config.trust import parent_problem
from agent.entrypoints import entry_points

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - EL9's Python 3.9
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/steward/steward.toml")
BUILTIN = "<built-in default>"


log = logging.getLogger(__name__)
T = TypeVar("T")
SECTION_GROUP = "steward.config"  # entry points: table path -> options dataclass


class _Sections(Mapping[str, type[Any]]):
    """Tables a config file may hold besides [checks.*] -> their schema: the core's
    ([restart], [notify.email]), those each feature registers in the ``steward.config``
    entry-point group ([backup], [patch], [usb]...) and each action's ``Options``
    ([notify.webhook]), read once, when first asked."""

    CORE: Mapping[str, type[Any]] = {"restart": RestartOptions, "alerts": AlertOptions,
                                     "notify.email": EmailOptions}

    def __init__(self) -> None:
        self._all: dict[str, type[Any]] | None = None

    def _load(self) -> dict[str, type[Any]]:
        if self._all is None:
            found = dict(self.CORE)
            for ep in entry_points(SECTION_GROUP):
                try:
                    cls = ep.load()
                except Exception as e:  # a broken feature must not keep the core from loading
                    log.error("config section [%s] (%s) failed to load: %s", ep.name, ep.value, e)
                    continue
                if ep.name not in found and getattr(cls, "TABLE", None) == ep.name:
                    found[ep.name] = cls
                else:
                    log.error("config section [%s]: %s is not an options class with TABLE = "
                              "%r", ep.name, ep.value, ep.name)
            for ep in entry_points("steward.actions"):  # an action's own table
                try:
                    options = getattr(ep.load(), "Options", None)
                except Exception as e:  # the daemon reports it as the action's failure too
                    log.debug("action %s has no config table: %s", ep.name, e)
                    continue
                path = getattr(options, "TABLE", None)
                if isinstance(path, str) and path not in found:
                    found[path] = options  # type: ignore[assignment]
            self._all = found
        return self._all

    def __getitem__(self, path: str) -> type[Any]:
        return self._load()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


SECTIONS = _Sections()

__all__ = ["BUILTIN", "DEFAULT_PATH", "SECTIONS", "AlertOptions", "CheckOptions", "Config",
           "ConfigError", "EmailOptions", "RestartOptions", "load"]
MOVED = ("cooldown", "reminder", "reminder_max", "digest")  # [notify.email] -> [alerts]


def table_names() -> tuple[str, ...]:
    return ("checks", *dict.fromkeys(p.split(".")[0] for p in SECTIONS))


@dataclass(frozen=True)
class Config:
    source: str  # the file it came from, or BUILTIN
    checks: Mapping[str, CheckOptions] = field(default_factory=dict)
    # Tables of check plugins that failed to load: kept unvalidated, reported by the registry.
    unloaded: Mapping[str, Any] = field(default_factory=dict)
    # Every other table, built: table path -> options (see SECTIONS).
    sections: Mapping[str, Any] = field(default_factory=dict)

    def section(self, cls: type[T]) -> T:
        """The options of the table ``cls`` declares (``cls.TABLE``); its defaults when this
        config holds none (a Config made in code)."""
        value = self.sections.get(getattr(cls, "TABLE", ""))
        return value if isinstance(value, cls) else cls()

    @property
    def restart(self) -> RestartOptions:
        return self.section(RestartOptions)

    @property
    def email(self) -> EmailOptions:
        return self.section(EmailOptions)

    @property
    def alerts(self) -> AlertOptions:
        """``[alerts]``, with what an older config still sets in ``[notify.email]``."""
        alerts, email = self.section(AlertOptions), self.email
        return replace(alerts, **{k: getattr(email, k) for k in MOVED
                                  if getattr(email, k) is not None})


def load(path: Path | None, plugins: Mapping[str, type[Any]],
         broken: frozenset[str] = frozenset()) -> Config:
    """Read and validate the config.

    ``path`` None means the default file if it exists, else the built-in default.
    ``plugins`` maps check names to their classes (for their ``Options``); ``broken`` names
    plugins that failed to load, whose tables are accepted unchecked.
    """
    source, data = read(path)
    return from_tables(data, source, plugins, broken)


def read(path: Path | None) -> tuple[str, Mapping[str, Any]]:
    """The config's source name and its TOML, unvalidated (see ``load``)."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return BUILTIN, {}
        path = DEFAULT_PATH
    name = str(path)
    try:
        # O_NONBLOCK: a FIFO given as the config must not hang steward; fstat what was opened.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            if not stat.S_ISREG(mode):
                raise ConfigError(name, "", _ABSENT, "not a regular file")
            _refuse_unsafe(fh.fileno(), name)
            if os.geteuid() == 0:
                _refuse_unsafe_parents(name)
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(name, "", _ABSENT, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(name, "", _ABSENT, "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(name, "", _ABSENT, "permission denied") from None
    except OSError as e:  # a name too long, a loop of symlinks, an I/O error
        raise ConfigError(name, "", _ABSENT, f"cannot read it: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(name, "", _ABSENT, f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(name, "", _ABSENT, "not valid TOML: not UTF-8 text") from None
    except RecursionError:  # the TOML parser recurses once per level of nesting
        raise ConfigError(name, "", _ABSENT, _TOO_DEEP) from None
    except MemoryError:
        raise ConfigError(name, "", _ABSENT, "too large to load") from None
    where = _too_deep(data)
    if where is not None:
        raise ConfigError(name, where, _ABSENT, _TOO_DEEP)
    return name, data


# No table of steward's nests deeper than a few levels; a limit keeps every later step (the
# validation, the messages) far from Python's recursion limit.
MAX_DEPTH = 16
_TOO_DEEP = f"arrays or tables nested more than {MAX_DEPTH} deep (steward's need at most 5)"


def _too_deep(data: Mapping[str, Any]) -> str | None:
    """The dotted key of the first value nested deeper than MAX_DEPTH, if any (no recursion)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            return key or "(top level)"
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1, f"{key}.{k}" if key else str(k))
                         for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, key) for v in value)
    return None


def _refuse_unsafe(fd: int, name: str) -> None:
    """As root, a config others can change would let them run commands as root: refuse it."""
    if os.geteuid() != 0:
        return
    st = os.fstat(fd)
    if st.st_uid != 0:
        raise ConfigError(name, "", _ABSENT, f"owned by uid {st.st_uid}, not root; refusing it "
                          "while running as root", "chown root: " + name)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(name, "", _ABSENT, f"mode {stat.S_IMODE(st.st_mode):04o} lets group "
                          "or others write it; refusing it while running as root",
                          "chmod go-w " + name)


def _refuse_unsafe_parents(name: str) -> None:
    """The file is checked; a directory others can write lets them replace it (sshd checks
    its keys' directories the same way)."""
    found = parent_problem(name)
    if found is not None:
        problem, remedy = found
        raise ConfigError(name, "", _ABSENT, problem + "; refusing it while running as root",
                          remedy)


def from_tables(data: Mapping[str, Any], source: str, plugins: Mapping[str, type[Any]],
                broken: frozenset[str] = frozenset()) -> Config:
    known = table_names()
    for key in data:
        if key not in known:
            raise ConfigError(source, key, _ABSENT, "unknown table", ", ".join(known))
    tables = data.get("checks", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(source, "checks", tables, "must be a table", "[checks.<name>] tables")
    for key, table in tables.items():
        if key not in plugins and key not in broken:
            raise ConfigError(source, f"checks.{key}", _ABSENT, "unknown check",
                              ", ".join(sorted({*plugins, *broken})))
        if key in broken and not isinstance(table, Mapping):
            raise ConfigError(source, f"checks.{key}", table, "must be a table")
    checks = {name: build(cls.Options, tables.get(name, {}), source, f"checks.{name}")
              for name, cls in sorted(plugins.items())}
    unloaded = {k: v for k, v in tables.items() if k in broken}
    sections = {path: build(cls, _section(data, path, source), source, path)
                for path, cls in SECTIONS.items()}
    email, alerts = _section(data, "notify.email", source), _section(data, "alerts", source)
    for key in MOVED:  # an older config's [notify.email] key, or [alerts]: not both
        if key in email and key in alerts:
            raise ConfigError(source, f"notify.email.{key}", _ABSENT, "set in [alerts] too "
                              "(it moved there and holds for every action)",
                              f"remove it from [notify.email]; keep [alerts] {key}")
    return Config(source, checks, unloaded=unloaded, sections=sections)


def _section(data: Mapping[str, Any], path: str, source: str) -> Any:
    """The table at dotted ``path`` ({} when absent); a parent holding anything but the known
    sub-tables is an error."""
    *parents, _ = path.split(".")
    table: Any = data
    for depth, name in enumerate(parents):
        table = table.get(name, {})
        where = ".".join(parents[:depth + 1])
        known = [p.split(".")[depth + 1] for p in SECTIONS if p.startswith(where + ".")]
        if not isinstance(table, Mapping):
            raise ConfigError(source, where, table, "must be a table",
                              ", ".join(f"[{where}.{k}]" for k in known))
        for key in table:
            if key not in known:
                raise ConfigError(source, f"{where}.{key}", _ABSENT, "unknown table",
                                  ", ".join(known))
    return table.get(path.rsplit(".", maxsplit=1)[-1], {}) if isinstance(table, Mapping) else {}
