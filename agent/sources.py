"""Sources: what the supervisor ticks each pass besides the checks, from the
``steward.sources`` entry-point group. A source watches something on its own terms (the patch
window's calendar, the USB hotplug monitor's kernel events) and hands the supervisor events
to alert on; the supervisor knows no source by name.

An entry point names a factory ``(SourceContext) -> Source``. A source that fails to load, or
whose tick raises, is logged and alerted about once; it never stops supervision.

    # setup.cfg
    steward.sources =
        heartbeat = hello.source:Heartbeat

    # hello/source.py
    class Heartbeat:
        name = "heartbeat"
        def __init__(self, ctx): self.ctx = ctx
        def configure(self, env): pass
        def start(self): return []
        def tick(self, now): return []
        def status(self): return None
        def stop(self): pass
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.entrypoints import entry_points
from agent.env import Env
from agent.events import Event
from agent.model import Status

log = logging.getLogger(__name__)
GROUP = "steward.sources"


class Source(Protocol):
    name: str

    def configure(self, env: Env) -> None:
        """The (re)loaded configuration; called before start and on every reload."""

    def start(self) -> list[Event]:
        """Start watching; what it has to say at once (the reboot a patch run asked for)."""

    def tick(self, now: float) -> list[Event]:
        """What happened since the last tick (wall-clock ``now``); called every pass."""

    def status(self) -> Mapping[str, Any] | None:
        """Its part of ``steward status`` (under its name), or None for none."""

    def stop(self) -> None: ...


@dataclass(frozen=True)
class SourceContext:
    env: Env
    state_dir: Path
    config_path: Path | None
    wake: Callable[[], None]  # call from another thread: the supervisor ticks at once

    def steward_argv(self, *command: str) -> list[str]:
        """``steward COMMAND...`` as a separate process with this daemon's state and config."""
        argv = [sys.executable, "-m", "agent", *command, "--state-dir", str(self.state_dir)]
        if self.config_path is not None:
            argv += ["--config", str(Path(self.config_path).absolute())]
        return argv


def load(ctx: SourceContext) -> tuple[list[Source], list[Event]]:
    """Every installed source, made for ``ctx``; and an alert for each that failed."""
    found: list[Source] = []
    failed: list[Event] = []
    for ep in entry_points(GROUP):
        try:
            source = ep.load()(ctx)
        except Exception as e:  # a broken source must not keep the daemon from starting
            log.exception("source %s (%s) failed to load", ep.name, ep.value)
            failed.append(Event("source", f"source:{ep.name}", Status.UNKNOWN,
                                f"source {ep.name} failed to load: {type(e).__name__}: {e}",
                                remedy=f"check the package providing {ep.value}"))
            continue
        found.append(source)
    return found, failed


def guarded(source: Source, what: str, call: Callable[[], Sequence[Event] | None]
            ) -> list[Event]:
    """``call()``'s alerts; a source that raises is logged, and supervision goes on."""
    try:
        return list(call() or ())
    except Exception:  # a broken source must not stop supervision
        log.exception("source %s: %s failed", source.name, what)
        return []
