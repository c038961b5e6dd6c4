"""Declarative option fields: each knows how to parse TOML input and what it accepts.

Options dataclasses (one per check plugin, one per config table) declare their fields with
``option(default, parser)``; ``build`` turns a TOML table into a frozen instance or raises a
ConfigError naming file, key, value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from agent.quote import clip, quote, scrub
from agent.ranges import ACCEPTED as RANGE_ACCEPTED
from agent.ranges import Range

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem a person can fix: where, what was found, what is accepted."""

    def __init__(self, file: str, key: str, value: Any, problem: str, accepted: str = "") -> None:
        self.file, self.key, self.value = file, key, value
        self.problem, self.accepted = problem, accepted
        super().__init__(str(self))

    def __str__(self) -> str:
        # Every part is bounded: the key and value come from the file, and a parser's problem
        # may quote a library's message that holds the value again.
        where = f"{clip(self.file, 200)}: {clip(self.key, 80)}" if self.key else \
            clip(self.file, 200)
        shown = "" if self.value is _ABSENT else f" = {quote(self.value)}"
        acc = f" (accepted: {clip(self.accepted, 600)})" if self.accepted else ""
        return f"{where}{shown}: {clip(self.problem, 600)}{acc}"


_ABSENT: Any = object()




@dataclass(frozen=True)
class Parser:
    """Turns a TOML value into a typed one; raises ValueError saying why not."""

    parse: Callable[[Any], Any]
    accepted: str


def option(default: T, parser: Parser, doc: str = "", key: str = "") -> T:
    """A config field; ``key`` is its TOML name when that cannot be a Python name ("from")."""
    meta = {"parser": parser, "doc": doc, "key": key}
    return dataclasses.field(default=default, metadata=meta)


def toml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key") or f.name)


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("not true or false")
    return v


BOOLEAN = Parser(_boolean, "true or false")


def number(lo: float = -math.inf, hi: float = math.inf, integer: bool = False) -> Parser:
    kind = "a whole number" if integer else "a number"
    bounds = f" from {lo:g} to {hi:g}" if math.isfinite(lo) and math.isfinite(hi) else (
        f" of at least {lo:g}" if math.isfinite(lo) else "")

    def parse(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                integer and not isinstance(v, int)):
            raise ValueError(f"not {kind}")
        if not (lo <= v <= hi):
            raise ValueError("out of range")
        return int(v) if integer else float(v)

    return Parser(parse, kind + bounds)


def choice(*values: str) -> Parser:
    def parse(v: Any) -> str:
        if v not in values:
            raise ValueError("not one of the choices")
        return str(v)

    return Parser(parse, ", ".join(f'"{c}"' for c in values))


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("not a non-empty string")
    return v


TEXT = Parser(_text, "a non-empty string")


def string(accepted: str, check: Callable[[str], object] | None = None) -> Parser:
    """A string option kept as written, once ``check`` (which raises ValueError saying why
    not) accepts it: the one shape of every "host:port", relay, resolver or unit option."""

    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("not a string")
        if check is not None:
            check(v)
        return v

    return Parser(parse, accepted)


UNIT_OR_NONE = string('a systemd unit, or "" for none')


def _argv(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError("not a command as a list of non-empty strings")
    if not v[0].startswith("/"):
        raise ValueError(f"the program {quote(v[0])} is not an absolute path")
    return tuple(v)


def http_url(v: Any) -> str:
    """``v`` if it is an http:// or https:// URL with a host (and a valid port, if any)."""
    from urllib.parse import urlsplit

    if not isinstance(v, str):
        raise ValueError("not a string")
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http:// or https:// URL with a host")
    parts.port  # noqa: B018 -- raises ValueError on a bad port
    return v


HTTP_URL = Parser(http_url, "an http:// or https:// URL")
ARGV = Parser(_argv, '["/absolute/program", "arg", ...]')  # a command run without a shell


def _range(v: Any) -> Range:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError("not a range")
    return Range.parse(str(v))


RANGE = Parser(_range, RANGE_ACCEPTED)


def listing(item: Parser) -> Parser:
    """A TOML array whose items all pass ``item``; kept as a tuple."""

    def parse(v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise ValueError("not a list")
        out: list[Any] = []
        for i, x in enumerate(v):
            try:
                parsed = item.parse(x)
            except ValueError as e:
                raise ValueError(f"item {i + 1} ({quote(x)}): {e}") from None
            if parsed in out:
                raise ValueError(f"item {i + 1} ({quote(x)}) is listed twice")
            out.append(parsed)
        return tuple(out)

    return Parser(parse, f"a list without repeats, each item {item.accepted}")


GLOBS = listing(Parser(_text, "a name or glob pattern"))


def _regex(v: Any) -> str:
    text = _text(v)
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None
    return text


REGEX = Parser(_regex, "a regular expression")


def table(key: Parser, value: Parser) -> Parser:
    """A TOML table whose keys pass ``key`` and values pass ``value``; kept read-only."""

    def parse(v: Any) -> Mapping[str, Any]:
        if not isinstance(v, Mapping):
            raise ValueError("not a table")
        out = {}
        for k, x in v.items():
            try:
                out[key.parse(k)] = value.parse(x)
            except ValueError as e:
                raise ValueError(f"entry {quote(k)}: {e}") from None
        return MappingProxyType(out)

    return Parser(parse, f"a table: keys {key.accepted}, values {value.accepted}")


def build(cls: type[T], table: Any, file: str, prefix: str) -> T:
    """An instance of Options dataclass ``cls`` from TOML ``table`` at ``prefix``."""
    if not isinstance(table, Mapping):
        raise ConfigError(file, prefix, table, "must be a table", "a [table] of keys")
    fields = {toml_key(f): f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if "parser" in f.metadata}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        f = fields.get(key)
        if f is None:
            raise ConfigError(file, f"{prefix}.{key}", _ABSENT, "unknown key", ", ".join(fields))
        parser: Parser = f.metadata["parser"]
        try:
            values[f.name] = parser.parse(raw)
        except ValueError as e:
            raise ConfigError(file, f"{prefix}.{key}", raw, scrub(str(e), raw),
                              parser.accepted) from None
    try:
        return cls(**values)
    except ValueError as e:  # a rule across keys, from the dataclass's __post_init__
        raise ConfigError(file, prefix, _ABSENT, str(e)) from None


def to_toml(value: Any) -> str:
    """Render an option value as TOML (for ``steward config show``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Range):
        return to_toml(value.text)
    if hasattr(value, "as_table"):  # an option value of its own shape (an [alerts] route)
        return to_toml(value.as_table())
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{to_toml(k)} = {to_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot render {value!r} as TOML")


def _tolerance(v: Any) -> tuple[int, int]:
    if not (isinstance(v, list) and len(v) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise ValueError("not a list of two whole numbers")
    n, m = v
    if not 1 <= n <= m <= 100:
        raise ValueError("needs 1 <= N <= M <= 100")
    return (n, m)


@dataclass(frozen=True)
class CheckOptions:
    """Keys every ``[checks.<name>]`` table accepts."""

    enabled: bool = option(True, BOOLEAN, "run this check")
    timeout: float = option(10.0, number(0.1, 3600), "seconds before the check is UNKNOWN")
    interval: float = option(30.0, number(1, 86400), "seconds between runs under steward run")
    tolerance: tuple[int, int] = option((1, 1), Parser(_tolerance, "[N, M]: act after N "
                                        "failed runs within the last M (1 <= N <= M <= 100)"),
                                        "act after N failed runs within the last M")
    depends_on: tuple[str, ...] = option((), GLOBS, "check ids (globs) whose failure "
                                         "inhibits this check's actions and alerts")
