"""``steward patch check`` (what dnf has pending, with its advisories) and ``steward patch
apply`` (patch.apply). The dnf adapter loads only when a patch command runs."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import Command, Setup
from agent.env import Env
from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.registry import Registry
    from patch.dnf import Update
    from patch.pending import Pending

NOTHING_PENDING, PENDING, DNF_FAILED = 0, 1, 3  # 2: bad arguments or config (agent.cli)
DEFAULT_TIMEOUT = 600.0
# patch.window.WINDOW_END_ENV (not imported: that module is not needed by every steward command)
WINDOW_END_ENV = "STEWARD_PATCH_WINDOW_END"


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("patch", help="dnf patching: what is pending (check), patch (apply), "
                       "the last report (last)",
                       description="Patch the system with dnf: see what is pending (check), "
                       "patch it with health checks before and after (apply), show the last "
                       "patch report (last).")
    common(p)
    psub = p.add_subparsers(dest="patch_command", metavar="ACTION")
    psub.required = True
    c = psub.add_parser(
        "check", help="list the pending updates and their advisories",
        description="Refresh dnf's metadata and list the pending updates with the advisories "
        "(errata) they fix: type, severity, CVEs, issue date, reboot suggested. Changes "
        "nothing. Exit code: 0 nothing pending, 1 updates pending (with --security: security "
        "updates pending), 2 bad arguments or config, 3 dnf failed (not installed, lock held "
        "by another dnf, repository unreachable: the message says which).")
    common(c)
    c.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for scripts")
    c.add_argument("--security", action="store_true",
                   help="only updates that fix a security advisory")
    c.add_argument("--installroot", type=Path, metavar="DIR",
                   help="the system installed at DIR instead of this one (its "
                   "etc/yum.repos.d, dnf cache and history; releasever 9)")
    _add_apply(psub, common)
    la = psub.add_parser(
        "last", help="the last patch report, with health before and after",
        description="The report of the last 'steward patch apply' (by hand or in the patch "
        "window): status, what changed, restarts, reboot, and the health checks' worst status "
        "before and after with the checks that got worse or better. Read from the state dir "
        "(patch/last-report.json). Exit 0; 2 when that file is not a report (it is named).")
    common(la)
    la.add_argument("--format", choices=("text", "json"), default="text")


def run(args: argparse.Namespace, env: Env, registry: Registry | None = None) -> int:
    if args.patch_command == "check":
        return cmd_check(args, env)
    if args.patch_command == "apply":
        return cmd_apply(args, env, registry)
    if args.patch_command == "last":
        from patch.lastreport import read, text

        doc = read(env.state_dir)
        sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.format == "json"
                         else text(doc))
        return 0
    raise UsageError(f"patch {args.patch_command}: not implemented here")


def cmd_check(args: argparse.Namespace, env: Env) -> int:
    from patch.dnf import Dnf, DnfError
    from patch.pending import look

    root = _root(args.installroot)
    opts = env.config.checks.get("updates")
    dnf = Dnf(env.commands, root, timeout=getattr(opts, "timeout", DEFAULT_TIMEOUT))
    try:
        pending = look(dnf, env.clock.now(), security_only=args.security,
                       every_advisory=not args.security)
    except DnfError as e:
        print(f"steward: dnf failed: {e}", file=sys.stderr)
        return DNF_FAILED
    if args.format == "json":
        doc = {**pending.to_json(), "installroot": str(root) if root else None}
        sys.stdout.write(json.dumps(doc, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        sys.stdout.write(render(pending, args.security))
    return PENDING if pending.updates else NOTHING_PENDING


def _add_apply(psub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from patch.outcome import EXIT_CODES

    a = psub.add_parser(
        "apply", help="patch now: health check, dnf upgrade, restarts, reboot, report",
        description="Patch the system now, as the patch window does: maintenance mode for the "
        "run; every enabled check once; the safety point (dnf history id; with [patch] "
        "pre_backup a backup first); dnf upgrade, retried every retry_interval while dnf is "
        "locked or a repository unreachable until the window ends ($" + WINDOW_END_ENV +
        ", else now + [patch] duration); the services needing a restart restarted one by "
        "one; every check again: a check that got worse means CRIT and the exact 'dnf "
        "history undo N' (run with --rollback-on-failure, then checked again); a reboot by "
        "[patch] reboot (at most one per window); pending.json recounted; the report on "
        "stdout and mailed to [notify.email] (queued if no relay takes it now). "
        + EXIT_CODES)
    common(a)
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--security", dest="mode", action="store_const", const="security",
                      help="only updates that fix a security advisory (default: [patch] mode)")
    mode.add_argument("--all", dest="mode", action="store_const", const="all",
                      help="every available update")
    a.add_argument("--exclude", action="append", default=[], metavar="PKG",
                   help="never update PKG (name or glob; repeatable; added to [patch] "
                   "exclude)")
    a.add_argument("--dry-run", action="store_true",
                   help="say what would change (dnf --assumeno) and change nothing: no "
                   "backup, maintenance, restart or reboot")
    a.add_argument("--rollback-on-failure", action=argparse.BooleanOptionalAction,
                   default=None, help="undo the transaction (dnf history undo) when health "
                   "got worse (default: [patch] rollback_on_failure)")
    a.add_argument("--installroot", type=Path, metavar="DIR",
                   help="patch the system installed at DIR (an image or chroot): checks judge "
                   "DIR as their sysroot; nothing on this host is restarted or rebooted, the "
                   "report says what the target would need")


def _window_end() -> float | None:
    text = os.environ.get(WINDOW_END_ENV, "").strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"${WINDOW_END_ENV}={text!r}: not an ISO 8601 time like "
                         "2025-06-01T05:00:00+02:00") from None


def cmd_apply(args: argparse.Namespace, env: Env, registry: Registry | None = None) -> int:
    from agent.registry import discover
    from agent.runner import resolve
    from backup.options import BackupOptions
    from patch.apply import Patcher, Request
    from patch.dnf import Dnf
    from patch.options import PatchOptions, package_glob
    from patch.report import publish

    opts = env.config.section(PatchOptions)
    root = _root(args.installroot)
    try:
        extra = tuple(package_glob(x) for x in args.exclude)
    except ValueError as e:
        raise UsageError(f"--exclude: {e}") from None
    if opts.pre_backup and not args.dry_run and not env.config.section(BackupOptions).target:
        raise UsageError(f"{env.config.source}: [patch] pre_backup = true needs [backup] "
                         "target")
    rollback = opts.rollback_on_failure if args.rollback_on_failure is None \
        else args.rollback_on_failure
    req = Request(security=(args.mode or opts.mode) == "security",
                  exclude=tuple(dict.fromkeys(opts.exclude + extra)), dry_run=args.dry_run,
                  rollback_on_failure=rollback, installroot=root, window_end=_window_end())
    registry = registry or discover()
    env = resolve(registry, env)
    dnf = Dnf(env.commands, root, timeout=opts.duration * 60.0)
    patcher = Patcher(env, registry, dnf, host=socket.gethostname(),
                      report=lambda out: publish(out, env.config, env.state_dir,
                                                 clock=env.clock),
                      say=lambda text: print(f"steward: {text}", file=sys.stderr, flush=True))
    return patcher.run(req).exit_code()


def _root(path: Path | None) -> Path | None:
    if path is None:
        return None
    root = path.absolute()
    if not root.is_dir():
        raise UsageError(f"--installroot {path}: not a directory")
    return root


def render(p: Pending, security_only: bool = False) -> str:
    """The text report: a summary line, then one line per update with its advisories."""
    if not p.updates:
        return "No security updates pending.\n" if security_only else "No updates pending.\n"
    n, m = len(p.security_packages), len(p.updates)
    head = f"{m} update{'s' if m != 1 else ''} pending"
    if not security_only:
        head += f", {n} fixing security advisories"
    oldest = p.oldest_security_issued
    if oldest is not None:
        days = max(0.0, p.checked - oldest) / 86400
        head += f"; oldest security advisory issued {_date(oldest)} ({days:.0f} days ago)"
    rows = [(f"{u.name}.{u.arch}", u.evr, u.repo, _notes(p, u)) for u in p.updates]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [head + ":"]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        lines.append(("  " + "  ".join([*cells, row[3]])).rstrip())
    return "\n".join(lines) + "\n"


def _notes(p: Pending, u: Update) -> str:
    notes = []
    for a in p.advisories_of(u):
        bits = [a.severity if a.type == "security" else a.type, *a.cves[:3]]
        if len(a.cves) > 3:
            bits.append(f"+{len(a.cves) - 3} CVEs")
        if a.published is not None:
            bits.append(f"issued {_date(a.published)}")
        if a.reboot_suggested:
            bits.append("reboot suggested")
        notes.append(f"{a.id} ({', '.join(bits)})")
    return "; ".join(notes)


def _date(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(epoch))


def _command(args: argparse.Namespace, setup: Setup) -> int:
    registry, env = setup(args, checks=args.patch_command != "last")
    return run(args, env, registry)


COMMAND = Command(add_parsers, {"patch": _command}, order=40)
