"""Quoting a value in a message a person reads: bounded, so a 2 MB key in a config file
gives a one-line error, not 2 MB of it."""

from __future__ import annotations

from typing import Any

LIMIT = 80  # characters of a quoted value kept in a message


def quote(value: Any, limit: int = LIMIT) -> str:
    """``value`` as a message shows it: a string in double quotes, anything else as its repr,
    cut to ``limit`` characters and then "…(N bytes)" saying how long the whole was."""
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        size = len(value.encode("utf-8", errors="replace"))
    else:
        try:
            text = repr(value)
        except RecursionError:  # a list nested a thousand deep
            text = f"<{type(value).__name__} nested too deeply to show>"
        size = len(text.encode("utf-8", errors="replace"))
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({size} bytes)"


def clip(text: str, limit: int = 400) -> str:
    """A whole message part (a library's error text that may quote a value) cut to ``limit``."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text.encode('utf-8', errors='replace'))} bytes)"


def scrub(message: str, value: Any) -> str:
    """``message`` with every long string of ``value`` (or of its items) in it replaced by its
    quoted, cut form: a library's error text (ipaddress, urllib) may repeat the whole value."""
    items = value if isinstance(value, (list, tuple)) else \
        [*value.keys(), *value.values()] if isinstance(value, dict) else [value]
    for item in [value, *items]:
        if isinstance(item, str) and len(item) > LIMIT and item in message:
            message = message.replace(item, quote(item)[1:])
    return message


def human_bytes(n: float) -> str:
    """A size in binary units: "512 B", "1.5 GiB" (the one byte formatter of every module)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
