"""The ``steward`` command line; the only module that calls sys.exit."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__, commands, daemon_cli
from agent.config import BUILTIN, MOVED, SECTIONS, Config, ConfigError, from_tables, read
from agent.config.schema import to_toml, toml_key
from agent.env import DEFAULT_STATE_DIR, Env
from agent.errors import UsageError
from agent.fileio import write_atomic
from agent.output import FORMATS
from agent.registry import Registry, discover
from agent.runner import Selector, resolve, run_all
from agent.state import StateDir, StateError

EXIT_USAGE = 2
log = logging.getLogger("steward")


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # On sub-commands the defaults are suppressed so "steward --config X check" keeps X.
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--config", metavar="PATH", type=Path, **d,
                        help="config file (default /etc/steward/steward.toml if present, "
                        "else the built-in default)")
    parser.add_argument("--state-dir", metavar="DIR", type=Path, **d,
                        help=f"steward's state (default $STEWARD_STATE_DIR or {DEFAULT_STATE_DIR})")
    parser.add_argument("-v", "--verbose", action="count", **({"default": 0} if top else d),
                        help="more log output on stderr (-vv for debug)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steward",
        description="Caretaker of a mail/web/DNS appliance. 'steward check' answers: is this "
        "box healthy? Exit codes follow Nagios: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN; a bad config "
        "or bad arguments exit 2 with a message.")
    p.add_argument("--version", action="version", version=f"steward {__version__}")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="run every enabled check once and report",
                       description="Run every enabled check once, concurrently, and report. "
                       "The exit code is the worst status: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.")
    _common(c, top=False)
    c.add_argument("--format", choices=sorted(FORMATS), default="text",
                   help="text for people (default), json for scripts, nagios (status line, "
                   "perfdata, long output), prometheus (textfile-collector format)")
    c.add_argument("--output", metavar="FILE", type=Path,
                   help="write the report to FILE atomically instead of standard output "
                   "(e.g. node_exporter's textfile directory)")
    c.add_argument("--only", metavar="PATTERN", action="append", default=[],
                   help="run only checks whose plugin name, instance or result id matches "
                   "(glob; repeatable), e.g. --only service --only 'disk:/var*' "
                   "--only maildns:example.com:spf")
    c.add_argument("--skip", metavar="PATTERN", action="append", default=[],
                   help="leave out checks or results whose plugin name, instance or result "
                   "id matches (glob; repeatable)")

    daemon_cli.add_parsers(sub, lambda p: _common(p, top=False))
    for command in _features()[0]:  # each feature's subcommands (steward.commands)
        command.add_parsers(sub, lambda p: _common(p, top=False))

    cfg = sub.add_parser("config", help="validate or show the configuration",
                         description="Validate or show the configuration.")
    _common(cfg, top=False)
    csub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    for name, text in (("check", "validate the config file; exit 0 if valid, 2 if not"),
                       ("show", "print the effective config: defaults and discovered values "
                        "filled in"),
                       ("default", "print the built-in default config as TOML, every key "
                        "commented out (the file the RPM installs)")):
        _common(csub.add_parser(name, help=text, description=text[0].upper() + text[1:] + "."),
                top=False)
    return p


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    return Path(os.environ.get("STEWARD_STATE_DIR") or DEFAULT_STATE_DIR)


def _setup(args: argparse.Namespace, selector: Selector | None = None, *, checks: bool = True
           ) -> tuple[Registry, Env]:
    """Config and plugins. ``checks=False``: a command that runs no check loads only the
    check plugins whose tables the file has (so they are still validated)."""
    source, data = read(args.config)
    tables = data.get("checks", {})
    written = set(tables) if isinstance(tables, dict) else set()
    # With --only, load just the selected plugins, those the file configures (so its every
    # table is still validated) and the service check, which others build on.
    only = selector if selector is not None and selector.only else None

    def wanted(name: str) -> bool:
        return name in written or (only is not None and (
            name == "service" or only.may_run(name, name)))

    registry = discover(wanted if only is not None or not checks else None)
    config = from_tables(data, source, registry.checks, registry.unloaded_checks)
    return registry, Env(config, state_dir=_state_dir(args))


def cmd_check(args: argparse.Namespace) -> int:
    if args.output and not args.output.parent.is_dir():
        raise UsageError(f"--output {args.output}: folder {args.output.parent} does not exist")
    selector = Selector(tuple(args.only), tuple(args.skip))
    registry, env = _setup(args, selector)
    env = resolve(registry, env, selector)
    report = run_all(registry, env, selector)
    if args.only and not report.results:
        enabled = sorted({n for n, o in env.config.checks.items() if o.enabled}
                         | registry.skipped)
        raise UsageError(f"--only {' '.join(args.only)}: matches no result of the enabled "
                         f"checks ({', '.join(enabled)})")
    host = socket.gethostname()
    if args.output:
        try:
            write_atomic(args.output, FORMATS[args.format](report, host, False))
        except OSError as e:
            raise UsageError(f"--output {args.output}: cannot write: {e.strerror}") from None
    else:
        sys.stdout.write(FORMATS[args.format](report, host, sys.stdout.isatty()))
    return int(report.status)


def show_config(loaded: Config, resolved: Config) -> str:
    """The effective config as TOML; values discovered on this machine are marked, since
    writing them into a file would stop their discovery."""
    lines = [f"# effective configuration from {resolved.source}",
             "# (built-in defaults and values discovered on this machine filled in)"]
    tables: list[tuple[str, Any, Any]] = [(f"checks.{n}", o, loaded.checks[n])
                                          for n, o in sorted(resolved.checks.items())]
    tables += [(path, resolved.section(cls), loaded.section(cls))
               for path, cls in SECTIONS.items()]
    for title, opts, before in tables:
        lines.append(f"\n[{title}]")
        for f in dataclasses.fields(opts):
            value, doc, key = getattr(opts, f.name), f.metadata.get("doc", ""), toml_key(f)
            if value is None:
                lines.append(f"# {key} is not set: {doc}")
            elif getattr(before, f.name) is None:
                lines.append(f"{key} = {to_toml(value)}   # discovered; unset: {doc}")
            else:
                lines.append(f"{key} = {to_toml(value)}   # {doc}")
    for name in sorted(resolved.unloaded):
        lines.append(f"\n# [checks.{name}] is kept as written: its plugin failed to load")
    return "\n".join(lines) + "\n"


def default_config(config: Config) -> str:
    """The built-in default as a TOML file whose every line is a comment: installed as
    /etc/steward/steward.toml it documents each key and changes nothing (a key written into
    the file would stop its discovery)."""
    lines = [f"# steward {__version__}: /etc/steward/steward.toml (generated by "
             "`steward config default`)",
             "# Every key is optional and shown with its built-in default, commented out.",
             "# Uncomment a table's [header] and the keys to change; `steward config check`",
             "# validates the file, `steward config show` prints what is in effect."]
    tables: list[tuple[str, Any]] = [(f"checks.{n}", o) for n, o in sorted(config.checks.items())]
    tables += [(path, config.section(cls)) for path, cls in SECTIONS.items()]
    for title, opts in tables:
        lines.append(f"\n#[{title}]")
        for f in dataclasses.fields(opts):
            value, doc, key = getattr(opts, f.name), f.metadata.get("doc", ""), toml_key(f)
            if value is None:
                lines.append(f"# {key}: not set by default; {doc}")
            else:
                lines.append(f"#{key} = {to_toml(value)}   # {doc}")
    return "\n".join(lines) + "\n"


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "default":
        registry = discover()
        sys.stdout.write(default_config(from_tables({}, BUILTIN, registry.checks)))
        for reason in registry.failures.values():
            print(f"warning: {reason}", file=sys.stderr)
        return 0
    registry, env = _setup(args)
    if args.config_command == "show":
        sys.stdout.write(show_config(env.config, resolve(registry, env).config))
        return 0
    cfg = env.config
    enabled = sum(o.enabled for o in cfg.checks.values())
    where = cfg.source if cfg.source != BUILTIN else "no config file; the built-in default"
    print(f"OK: {where} is valid ({len(cfg.checks)} checks, {enabled} enabled)")
    for reason in registry.failures.values():
        print(f"warning: {reason}", file=sys.stderr)
    for key in MOVED:
        if getattr(cfg.email, key) is not None:
            print(f"warning: {cfg.source}: [notify.email] {key} is read as [alerts] {key} "
                  "(it moved there and holds for every action)", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.notify import for_config
    from agent.supervisor import Supervisor
    from agent.system.unitwatch import UnitWatcher

    registry, env = _setup(args)
    env = dataclasses.replace(env, keeps_state=True)
    state = StateDir(env.state_dir, env.clock)
    state.ensure()
    host = socket.gethostname()
    return Supervisor(registry, env, args.config,
                      lambda config: for_config(config, env.state_dir, host), state,
                      watcher=UnitWatcher).run()


def cmd_notify(args: argparse.Namespace) -> int:
    from agent.notify import commands

    _, env = _setup(args)
    StateDir(env.state_dir).ensure()
    if args.notify_command == "test":
        return commands.cmd_test(env.config, env.state_dir, socket.gethostname())
    if args.notify_command == "outbox":
        return commands.cmd_outbox(env.config, env.state_dir, args.format)
    return commands.cmd_flush(env.config, env.state_dir)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": cmd_check,
    "config": cmd_config,
    "run": cmd_run,
    "status": lambda a: daemon_cli.cmd_status(StateDir(_state_dir(a)),
                                                 a.format == "json"),
    "maintenance": lambda a: daemon_cli.cmd_maintenance(StateDir(_state_dir(a)), a.mode,
                                                         a.units, getattr(a, "duration", ""),
                                                         a.format),
    "reset": lambda a: daemon_cli.cmd_reset(StateDir(_state_dir(a)), a.unit),
    "notify": cmd_notify,
}


@functools.lru_cache(maxsize=1)
def _features() -> tuple[list[commands.Command], dict[str, str]]:
    return commands.load()


def handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    """The core's commands and those the features add (steward.commands entry points)."""
    found = dict(HANDLERS)
    for command in _features()[0]:
        for name, handler in command.handlers.items():
            if name not in found:
                found[name] = _bound(handler)
    return found


def _bound(handler: commands.Handler) -> Callable[[argparse.Namespace], int]:
    return lambda args: handler(args, _setup)


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    # Built once per process: building it is most of a config check's time, which the
    # in-process fuzz test of the loader runs ten thousand times.
    return build_parser()


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    if args.command == "run":
        level = min(level, logging.INFO)  # the daemon says what it does
    # journald stamps each line itself; elsewhere say when.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level, format=stamp + "steward: %(levelname)s %(name)s: "
                        "%(message)s")
    for name, reason in _features()[1].items():
        log.warning("steward.commands plugin %s: %s", name, reason)
    handler: Callable[[argparse.Namespace], int] = handlers()[args.command]
    try:
        code = handler(args)
    except ConfigError as e:
        print(f"steward: config error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (UsageError, StateError) as e:
        print(f"steward: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(code)
