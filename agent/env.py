"""Env: what a check or action may use to look at (or act on) the world."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config
from agent.system.clock import Clock
from agent.system.commands import CommandRunner
from agent.system.systemd import Systemd

DEFAULT_STATE_DIR = Path("/var/lib/steward")


@dataclass(frozen=True)
class Env:
    config: Config
    commands: CommandRunner = field(default_factory=CommandRunner)
    systemd: Systemd = field(default=None)  # type: ignore[assignment]
    clock: Clock = field(default_factory=Clock)
    sysroot: Path = Path("/")
    state_dir: Path = DEFAULT_STATE_DIR
    # Whether checks move their own bookkeeping forward (log positions): only under steward
    # run, so that a manual steward check reads the news without taking it from the daemon.
    keeps_state: bool = False

    def __post_init__(self) -> None:
        if self.systemd is None:
            object.__setattr__(self, "systemd", Systemd(self.commands))
