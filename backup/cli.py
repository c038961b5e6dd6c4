"""``steward backup create|start|last|list|verify|restore-file``. Heavy modules load only when
used."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.commands import Command, Setup
from agent.errors import UsageError
from agent.system.clock import Clock
from backup.options import BackupOptions
from backup.summary import committed_lines

if TYPE_CHECKING:
    from agent.env import Env


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    b = sub.add_parser("backup", help="whole-system backup: create, start, last report, list, "
                       "verify, restore files",
                       description="Back up the whole system (or one tree) into verified "
                       "generations of zstd-compressed tar archives on a target folder, e.g. "
                       "a USB drive's data partition.")
    common(b)
    bsub = b.add_subparsers(dest="backup_command", metavar="ACTION")
    bsub.required = True

    def target(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--target", type=Path, metavar="DIR",
                       help="folder holding the generations (default: [backup] target)")

    c = bsub.add_parser("create", help="write a new generation",
                        description="Write a new generation: every local filesystem below the "
                        "source, excludes applied, archives read back before the generation is "
                        "committed; then the oldest beyond [backup] keep are deleted. With "
                        "--usb, onto the steward drive: found by its label (STEWARD-DATA), "
                        "mounted, written to, unmounted, and a report mailed ([notify.email]). "
                        "Its report, committed or not, is kept for 'steward backup last'. "
                        "Exit 0 when committed, 1 when the backup failed (nothing committed), "
                        "2 with --usb when no steward drive or several are attached.")
    target(c)
    c.add_argument("--source", type=Path, metavar="DIR",
                   help="back up this tree alone (default: [backup] source, /: the whole "
                   "system)")
    c.add_argument("--jobs", type=int, metavar="N", help="archives compressed at once "
                   "(default: [backup] jobs)")
    c.add_argument("--usb", action="store_true",
                   help="back up to the steward drive's generations folder instead of --target "
                   "and mail a report")
    c.add_argument("--device", metavar="DEV", help="with --usb: which steward drive, when "
                   "several are attached (its data partition or its disk, e.g. /dev/sdb)")
    s = bsub.add_parser("start", help="start a backup in the background, as the daemon does",
                        description="Start 'steward backup create' (with --usb: onto the "
                        "steward drive) as its own transient systemd unit, the way steward run "
                        "starts one when the drive is plugged in, and return: closing the "
                        "terminal or restarting steward does not stop it. Not while another "
                        "backup or a patch run is active. 'steward backup last' shows its "
                        "progress and then its report. Exit 0 started, 1 not started because "
                        "another backup or patch run is active, 3 systemd-run failed.")
    target(s)
    s.add_argument("--source", type=Path, metavar="DIR",
                   help="back up this tree alone (default: [backup] source)")
    s.add_argument("--usb", action="store_true", help="onto the steward drive (default: the "
                   "[backup] target folder)")
    s.add_argument("--device", metavar="DEV", help="with --usb: which steward drive")
    s.add_argument("--format", choices=("text", "json"), default="text")
    la = bsub.add_parser("last", help="the last backup's report and the running one's progress",
                         description="The report of the last 'steward backup create' (to a "
                         "folder or the USB drive, started by hand, by the daemon or from the "
                         "Cockpit page): when, where, generation, sizes, duration, verified, "
                         "files that changed while read, errors; and, while a backup runs, "
                         "its progress so far. Read from the state dir (backup/last-report."
                         "json, backup/progress.json). Exit 0; 2 when the report file is not "
                         "a report (it is named).")
    common(la)
    la.add_argument("--format", choices=("text", "json"), default="text")
    ls = bsub.add_parser("list", help="the generations on the target",
                         description="The committed generations, oldest first.")
    target(ls)
    ls.add_argument("--format", choices=("text", "json"), default="text")
    v = bsub.add_parser("verify", help="re-read a generation and check its checksums",
                        description="Re-read every archive of a generation (default the "
                        "newest) and check it against SHA256SUMS and the manifest. Exit 0 "
                        "intact, 1 damaged (what is damaged is named).")
    target(v)
    v.add_argument("generation", nargs="?", metavar="GEN", help="generation id (default newest)")
    v.add_argument("--live", action="store_true",
                   help="also compare the archives with the live files (tar --compare) and "
                   "list what changed since")
    r = bsub.add_parser("restore-file", help="restore files or trees from a generation",
                        description="Restore PATHs (relative to the backed-up source; / for "
                        "everything) with all their metadata into --to DIR.")
    target(r)
    r.add_argument("generation", metavar="GEN", help="generation id, or 'latest'")
    r.add_argument("paths", nargs="+", metavar="PATH")
    r.add_argument("--to", type=Path, metavar="DIR", required=True,
                   help="where to put them (created if missing); nothing is written outside "
                   "it, whatever the drive holds: members that would leave it are refused "
                   "and named (exit 1)")
    r.add_argument("--devices", action="store_true",
                   help="also make device nodes (skipped and named by default: a file "
                   "restore makes none)")


def _target(args: argparse.Namespace, opts: BackupOptions) -> Path:
    target = args.target or (Path(opts.target) if opts.target else None)
    if target is None:
        raise UsageError("no backup target: pass --target DIR or set [backup] target")
    if not target.is_dir():
        raise UsageError(f"backup target {target}: not a directory")
    return target


def run(args: argparse.Namespace, opts: BackupOptions, env: Env | None = None) -> int:
    """``steward backup ...``; ``env`` (the agent's) is needed by ``create --usb``, ``start``
    and ``last``; without it ``create`` keeps no report nor progress file."""
    from backup.store import Store, StoreError

    if args.backup_command == "last":
        return _last(args, env)
    if args.backup_command in ("create", "start") and args.device and not args.usb:
        raise UsageError("--device picks the drive for --usb; for a folder use --target")
    if args.backup_command == "create" and args.usb:
        return _create_usb(args, opts, env)
    if args.backup_command == "start":
        return _start(args, opts, env)
    target = _target(args, opts)
    try:
        if args.backup_command == "create":
            return _create(args, opts, target, env)
        store = Store(target)
        if args.backup_command == "list":
            return _list(store, args.format)
        if args.backup_command == "verify":
            return _verify(store, args, env.clock if env else Clock())
        return _restore(store, args)
    except StoreError as e:
        raise UsageError(str(e)) from None


def _source(args: argparse.Namespace, opts: BackupOptions) -> str:
    source = args.source or Path(opts.source)
    if not source.is_dir():
        what = "--source" if args.source else "[backup] source ="
        raise UsageError(f"{what} {source}: not a directory")
    if getattr(args, "jobs", None) is not None and not 1 <= args.jobs <= 64:
        raise UsageError(f"--jobs {args.jobs}: accepted 1 to 64")
    return os.path.realpath(str(source))


def _create(args: argparse.Namespace, opts: BackupOptions, target: Path,
            env: Env | None) -> int:
    from backup.create import BackupError, create
    from backup.lastreport import Run

    source = _source(args, opts)
    run = Run("folder", source, _now(env), target=str(target))
    try:
        with _progress(run, env):
            out = create(source, target, opts, jobs=args.jobs)
    except BackupError as e:
        text = f"backup failed, nothing committed: {e}"
        print(f"steward: {text}", file=sys.stderr)
        return _reported(env, run, 1, None, errors=[text], text=text)
    lines = committed_lines(out, target, opts.keep)
    print("\n".join(lines))
    code = 0
    if out.hook_failures:
        print("steward: the backup is committed, but " + "; ".join(out.hook_failures),
              file=sys.stderr)
        code = 1
    return _reported(env, run, code, out, errors=out.hook_failures,
                     text="\n".join(lines) + "\n")


def _now(env: Env | None) -> float:
    if env is not None:
        return env.clock.now()
    from agent.system.clock import Clock

    return Clock().now()


def _progress(run: Any, env: Env | None) -> Any:
    """backup/progress.json kept while the backup runs (nothing without a state dir)."""
    import contextlib

    if env is None:
        return contextlib.nullcontext()
    from backup.lastreport import Progress

    return Progress(env.state_dir, run, env.clock).kept()


def _reported(env: Env | None, run: Any, code: int, outcome: Any, *, errors: list[str],
              text: str) -> int:
    """The one write at the end of a backup: backup/last-report.json; ``code`` returned."""
    from backup.lastreport import report, write_report

    if env is None:
        return code
    doc = report(run, _now(env), code, outcome, errors=errors, text=text)
    try:
        write_report(env.state_dir, doc)
    except OSError as e:
        print(f"steward: the backup's report for the Cockpit page could not be written: "
              f"{e.filename}: {e.strerror or e}", file=sys.stderr)
    return code


def _start(args: argparse.Namespace, opts: BackupOptions, env: Env | None) -> int:
    from backup.start import start

    if env is None:
        raise UsageError("backup start needs steward's configuration")
    _source(args, opts)  # refused here, not in a unit nobody watches
    if not args.usb:
        _target(args, opts)
    elif args.target is not None:
        raise UsageError("--usb writes to the steward drive; leave out --target")
    return start(args, env)


def _last(args: argparse.Namespace, env: Env | None) -> int:
    from backup.lastreport import read, text

    if env is None:
        raise UsageError("backup last needs steward's state dir")
    doc = read(env.state_dir)
    if args.format == "json":
        print(json.dumps(doc, indent=1))
    else:
        sys.stdout.write(text(doc))
    return 0


def _create_usb(args: argparse.Namespace, opts: BackupOptions, env: Env | None) -> int:
    from backup.lastreport import Run
    from usbimage.drive import DriveError
    from usbimage.options import UsbOptions
    from usbimage.usbbackup import backup_to_usb, mail_report

    if args.target is not None:
        raise UsageError("--usb writes to the steward drive; leave out --target")
    if env is None:
        raise UsageError("backup create --usb needs steward's configuration (its report is "
                         "mailed through [notify.email])")
    run = Run("usb", _source(args, opts), _now(env), drive=args.device)
    try:
        with _progress(run, env):
            job = backup_to_usb(run.source, opts, env.config.section(UsbOptions),
                                device=args.device, runner=env.commands, jobs=args.jobs)
    except DriveError as e:  # no drive, several, not the one named: said, and exit 2
        _reported(env, run, 2, None, errors=[str(e)], text=f"backup to USB not started: {e}\n")
        raise
    if job.failure:
        print(f"steward: backup to {job.drive.device} failed: {job.failure}", file=sys.stderr)
    for problem in job.problems:
        print(f"steward: {problem}", file=sys.stderr)
    mail_report(job, env.config.email, env.state_dir, sys.stdout, env.clock.now())
    run.target, run.drive = job.target, job.drive.device
    errors = [job.failure] if job.failure else []
    return _reported(env, run, job.code, job.outcome, errors=errors + job.problems,
                     text=job.text())


def _list(store: Any, fmt: str) -> int:
    rows = []
    for gen in store.generations():
        try:
            m = gen.manifest()
        except Exception as e:
            rows.append({"id": gen.id, "created": None, "bytes": None, "verified": False,
                         "error": str(e)})
            continue
        t = m["totals"]
        rows.append({"id": gen.id, "created": m["created"], "bytes": t["stored"],
                     "verified": gen.verified(m), "source": m["source"],
                     "source_bytes": t["bytes"], "entries": t["entries"]})
    if fmt == "json":
        print(json.dumps({"generations": rows}, indent=1))
        return 0
    from backup.progress import human

    if not rows:
        print(f"no generations in {store.target}")
    for r in rows:
        if "error" in r:
            print(f"{r['id']}  DAMAGED: {r['error']}")
            continue
        print(f"{r['id']}  {r['created']}  {human(r['bytes']):>10}  "
              f"{'verified' if r['verified'] else 'NOT VERIFIED'}  {r['entries']} entries "
              f"of {r['source']}")
    return 0


def _verify(store: Any, args: argparse.Namespace, clock: Clock) -> int:
    from backup.progress import human
    from backup.restore import verify

    gen = store.find(args.generation)
    live = gen.manifest()["source"] if args.live else None
    report = verify(gen, live, clock)
    for p in report.problems:
        print(f"DAMAGED: {p}")
    for d in report.differences[:50]:
        print(f"changed since: {d}")
    if len(report.differences) > 50:
        print(f"... and {len(report.differences) - 50} more changes")
    state = "intact" if report.ok else f"DAMAGED ({len(report.problems)} problems)"
    print(f"generation {gen.id}: {state}; {report.checked} files, {human(report.bytes)} "
          "re-read")
    return 0 if report.ok else 1


def _restore(store: Any, args: argparse.Namespace) -> int:
    from backup.archive import ArchiveError
    from backup.restore import restore

    gen = store.find(args.generation)
    try:
        sel = restore(gen, args.paths, args.to, devices=args.devices)
    except ArchiveError as e:
        print(f"steward: restore failed: {e}", file=sys.stderr)
        return 1
    for t in sel.added_links:
        print(f"also restored {t}: a requested path is a hard link to it")
    for name in sel.skipped[:100]:
        print(f"skipped device node {name} (--devices makes them)")
    if len(sel.skipped) > 100:
        print(f"... and {len(sel.skipped) - 100} more device nodes skipped")
    for line in sel.refused:
        print(f"steward: {line}", file=sys.stderr)
    if sel.refused_count > len(sel.refused):
        print(f"steward: ... and {sel.refused_count - len(sel.refused)} more refused",
              file=sys.stderr)
    if sel.refused_count:
        print(f"steward: restore of generation {gen.id} into {args.to} FAILED: "
              f"{sel.refused_count} members refused (they would have been written outside "
              "it, or are not what steward writes); the rest is restored", file=sys.stderr)
        return 1
    print(f"restored {sel.entries} entries from generation {gen.id} into {args.to}")
    return 0


def _command(args: argparse.Namespace, setup: Setup) -> int:
    _, env = setup(args, checks=False)
    return run(args, env.config.section(BackupOptions), env)


COMMAND = Command(add_parsers, {"backup": _command}, order=20)
