"""Subcommands a feature adds to ``steward``: the ``steward.commands`` entry-point group.

Each entry point names a Command: ``add_parsers(sub, common)`` adds its subparsers (calling
``common`` on each, for --config, --state-dir and -v), and ``handlers`` maps each top-level
command name it adds to a function ``(args, setup) -> exit code``. ``setup(args, checks=...)``
reads the config and loads the check plugins as every command does (a bad config is exit 2
before the handler runs); ``checks=False`` for a command that runs no check.

    # setup.cfg of a feature or third-party package
    [options.entry_points]
    steward.commands =
        hello = hello.cli:COMMAND

    # hello/cli.py
    def _add(sub, common):
        common(sub.add_parser("hello", help="say hello"))

    def _run(args, setup):
        _, env = setup(args, checks=False)
        print("hello from", env.config.source)
        return 0

    COMMAND = Command(_add, {"hello": _run})
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from agent.entrypoints import entry_points

if TYPE_CHECKING:
    from agent.env import Env
    from agent.registry import Registry

log = logging.getLogger(__name__)
GROUP = "steward.commands"


class Setup(Protocol):
    def __call__(self, args: argparse.Namespace, *, checks: bool = True
                 ) -> tuple[Registry, Env]: ...


Handler = Callable[[argparse.Namespace, Setup], int]
Common = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    add_parsers: Callable[[Any, Common], None]
    handlers: Mapping[str, Handler]
    order: int = 50  # where its commands stand in ``steward --help`` (steward's: 10 to 50)


def load() -> tuple[list[Command], dict[str, str]]:
    """The commands of every installed distribution, in ``order``, and the entry points that
    failed to load -> why (``steward --help`` still works without them)."""
    found: list[tuple[int, str, Command]] = []
    failures: dict[str, str] = {}
    for ep in entry_points(GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken feature must not take the CLI down with it
            failures[ep.name] = f"cannot load {ep.value}: {type(e).__name__}: {e}"
            continue
        if not isinstance(obj, Command):
            failures[ep.name] = f"{ep.value} is not an agent.commands.Command"
            continue
        found.append((obj.order, ep.name, obj))
    return [c for _, _, c in sorted(found, key=lambda t: (t[0], t[1]))], failures
