"""``steward restore``: rebuild the machine from a generation — in the rescue boot, or from
any live system with the drive attached (cold standby onto a spare disk).

Order, so that nothing is written unless everything needed is there: read the generation
and its layout; map the saved disks onto the present ones and plan every step; show the
plan; check the generation is whole (manifest, SHA256SUMS, every index against its sha256,
every archive there with the size written); get the target disks' names typed (or --yes);
then partition, LVM, filesystems, extract, fixes, boot loader, report.

Every archive is read against its sha256 before any disk is written: a damaged generation
(the drive's bits rotted, or it is hostile) is refused while the target disks still hold
what they held, which the administrator may yet need. The extraction hashes each archive
again on its way into zstd (``hash_first=False``) instead of a third read before it (was:
verify, hash, extract): a drive that gives other bytes the second time fails the restore
naming the archive, its files removed again, no symlinks, directory times, fixes, boot
loader or report after it, so nothing of it is left looking restored.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.commands import Command, Setup
from agent.errors import UsageError
from agent.fileio import read_json
from agent.system.clock import Clock
from agent.system.commands import CommandError, CommandRunner
from backup.archive import ArchiveError
from backup.progress import human
from backup.store import Generation, Store, StoreError

# Imported where used: every steward command builds this one's parser, few run it (a
# re-backup's start-up is ~20 ms shorter, -X importtime).
if TYPE_CHECKING:
    from usbimage.detect import Disk
    from usbimage.restoreplan import Plan

REPORT = "var/log/steward-restore.txt"  # kept on the restored system
DEFAULT_MOUNT = "/run/steward/restore"


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    r = sub.add_parser(
        "restore", help="rebuild this machine from a backup generation (bare metal)",
        description="Recreate the saved disks' partition tables, LVM and filesystems (saved "
        "UUIDs and labels) on the disks present, extract the generation, restore SELinux "
        "labels, fix fstab and the boot loader configuration where UUIDs had to change, "
        "reinstall the boot loader for the saved boot mode and leave a report in "
        f"/{REPORT}. Every archive is checked against its sha256 before any disk is written, "
        "and again as it is extracted. Exit 0 restored, 1 failed or aborted (a damaged "
        "generation: nothing written; an archive read differently while extracted: named, "
        "its files removed, no boot loader), 2 refused (bad arguments, no disk fits, a disk "
        "in use).")
    common(r)
    r.add_argument("generation", nargs="?", metavar="GEN",
                   help="the generation (default: the newest verified one)")
    r.add_argument("--target", type=Path, metavar="DIR", help="folder holding the generations "
                   "(default: the steward drive's, found by its label)")
    r.add_argument("--device", metavar="DEV", help="the steward drive, when several are "
                   "attached")
    r.add_argument("--map", action="append", default=[], metavar="SAVED=DISK",
                   help="restore saved disk SAVED onto DISK (repeatable); default: the same "
                   "name if it fits, else the smallest free disk that fits")
    r.add_argument("--new-uuids", action="store_true", help="make new filesystem and "
                   "partition UUIDs (and fix fstab/boot loader) even where the saved ones are "
                   "free; saved UUIDs in use on this machine are always replaced")
    r.add_argument("--plan", action="store_true", help="show the plan and check every "
                   "archive against its sha256; write nothing")
    r.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    r.add_argument("--mount-dir", type=Path, default=Path(DEFAULT_MOUNT), metavar="DIR",
                   help=f"where the restored system is mounted meanwhile (default {DEFAULT_MOUNT})")


def uuids_in_use(present: Iterable[dict[str, str]]) -> set[str]:
    """Filesystem and partition UUIDs on the disks that stay (blkid -p records)."""
    out: set[str] = set()
    for rec in present:
        for key in ("UUID", "PART_ENTRY_UUID", "UUID_SUB"):
            if rec.get(key):
                out.add(rec[key].lower())
    return out


def text(plan: Plan) -> str:
    g, m = plan.generation, plan.manifest
    lines = [f"Restore generation {g.id} (created {m.get('created')}, "
             f"{m.get('totals', {}).get('files', '?')} files, "
             f"{human(int(m.get('totals', {}).get('bytes', 0)))}) from {g.path.parent}",
             f"Saved system: {plan.layout.get('hostname', '?')}, boot mode "
             f"{plan.boot_mode}, kernel {plan.layout.get('kernel', '?')}"]
    for t in plan.targets:
        d = t.disk
        ident = " ".join(x for x in (d.vendor, d.model) if x) or d.transport
        lines.append(f"Disk {t.saved['name']} ({human(int(t.saved['size']))}) -> {d.path} "
                     f"({ident}, {human(d.size)}): EVERYTHING ON {d.path} IS DESTROYED")
        for p in d.partitions:
            lbl = f" label {p.label!r}" if p.label else ""
            lines.append(f"    now: {p.path} {human(p.size)} {p.fstype or 'no filesystem'}{lbl}")
        if d.fstype:
            lines.append(f"    now: whole disk {d.fstype}")
        lines += [f"    {n}" for n in t.notes]
    for f in plan.filesystems:
        where = f"files of {f.mountpoint}" if f.prefix is not None else "empty"
        uid = f"UUID {f.uuid}" + (f" -> NEW {f.new_uuid}" if f.new_uuid else "")
        lbl = f", label {f.label!r}" if f.label else ""
        lines.append(f"  {f.device}: {f.fstype}, {uid}{lbl}, {where}")
    for dev, pv_uuid, vg in plan.lvm.pvs:
        new = plan.renames.get(pv_uuid.lower())
        lines.append(f"  {dev}: LVM physical volume {pv_uuid}{f' -> NEW {new}' if new else ''} "
                     f"of {vg}")
    for vg, lv, size in plan.lvm.lvs:
        lines.append(f"  /dev/{vg}/{lv}: logical volume, {human(size)}")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def _parse_map(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        saved, sep, disk = item.partition("=")
        if not sep or not saved.startswith("/dev/") or not disk:
            raise UsageError(f"--map {item}: expected SAVED=DISK, e.g. --map /dev/sda=/dev/vdb")
        out[saved] = disk
    return out


def _generation(store: Store, gen_id: str | None) -> Generation:
    if gen_id is not None:
        return store.find(gen_id)
    gens = [g for g in store.generations() if g.verified(g.manifest())]
    if not gens:
        raise StoreError(f"no verified generation in {store.target}; name one to use it anyway")
    return gens[-1]


def _layout(gen: Generation) -> dict[str, Any]:
    try:
        data = read_json(gen.path / "layout.json")
    except (OSError, ValueError) as e:
        raise StoreError(f"generation {gen.id}: layout.json unreadable: {e}") from None
    if not isinstance(data, dict):
        raise StoreError(f"generation {gen.id}: layout.json is not a layout")
    return data


def candidates(runner: CommandRunner, explicit: dict[str, str]) -> tuple[list[Disk], list[Disk]]:
    """(disks restore may write, all disks). Loop devices only when named with --map; never
    one in use, read-only or holding the running system (or the drive restored from)."""
    from usbimage.detect import list_disks

    every = list_disks(all_disks=True, runner=runner)
    named = {os.path.realpath(d) for d in explicit.values()}
    ok = []
    for d in every:
        if d.transport == "loop" and d.path not in named:
            continue
        if d.read_only or d.in_use or d.system or d.holders:
            if d.path in named:
                why = "; ".join([*d.in_use, *(["read-only"] if d.read_only else []),
                                 *(["holds the running system"] if d.system else []),
                                 *([f"{', '.join(d.holders)} built on it"] if d.holders
                                   else [])])
                raise UsageError(f"refusing to restore onto {d.path}: {why}")
            continue
        ok.append(d)
    return ok, every


def _in_use(runner: CommandRunner, every: list[Disk], targets: set[str]) -> set[str]:
    from usbimage.detect import blkid

    records = []
    for d in every:
        if d.path in targets:
            continue
        for node in [p.path for p in d.partitions] or [d.path]:
            try:
                records.append(blkid(runner, node))
            except CommandError:
                continue
    return uuids_in_use(records)


def active_vgs(sysfs_root: str = "/sys") -> dict[str, list[str]]:
    """Volume groups with active logical volumes here: VG name -> device-mapper names."""
    out: dict[str, list[str]] = {}
    for path in sorted(glob.glob(f"{sysfs_root}/block/dm-*/dm/name")):
        try:
            name = Path(path).read_text().strip()
        except OSError:
            continue
        m = re.match(r"((?:[^-]|--)+)-(?:[^-]|--)", name)  # LVM doubles a name's own '-'
        if m:
            out.setdefault(m.group(1).replace("--", "-"), []).append(name)
    return out


def plan_for(gen: Generation, runner: CommandRunner, explicit: dict[str, str],
             new_uuids: bool) -> Plan:
    from usbimage.restoreplan import make_plan

    layout = _layout(gen)
    present, every = candidates(runner, explicit)
    first = make_plan(gen, layout, present, explicit, new_uuids=new_uuids)
    targets = {t.disk.path for t in first.targets}
    in_use = _in_use(runner, every, targets)
    fixed = {t.saved["name"]: t.disk.path for t in first.targets}
    plan = make_plan(gen, layout, present, fixed, new_uuids=new_uuids, in_use=in_use)
    active = active_vgs()
    for vg, _ in plan.lvm.vgs:  # its LVs could not be activated under their own names
        if vg in active:
            raise UsageError(f"volume group {vg} is active on this machine "
                             f"({', '.join(active[vg])}), from a disk that is not restored; "
                             f"restore from the rescue system, or stop using it and run "
                             f"'vgchange -an {vg}' first")
    return plan


def _confirmed(plan: Plan, stdin: TextIO, out: TextIO) -> bool:
    names = [t.disk.name for t in plan.targets]
    if not stdin.isatty():
        raise UsageError("refusing to restore without confirmation: standard input is not a "
                         "terminal; pass --yes to restore without asking")
    out.write(f"Type the name{'s' if len(names) > 1 else ''} of the disk"
              f"{'s' if len(names) > 1 else ''} to overwrite ({' '.join(names)}), anything "
              "else aborts: ")
    out.flush()
    answer = stdin.readline().split()
    return sorted(a.removeprefix("/dev/") for a in answer) == sorted(names)


def restore_command(args: argparse.Namespace, runner: CommandRunner, gen: Generation, *,
                    stdin: TextIO, out: TextIO) -> int:
    from backup.restore import Damaged, VerifyReport, check_manifest, restore, verify

    plan = plan_for(gen, runner, _parse_map(args.map), args.new_uuids)
    out.write(text(plan))
    out.write(f"checking every archive of {gen.id} against its sha256 before writing...\n")
    out.flush()
    clock = Clock()
    checking = clock.monotonic()
    try:
        check_manifest(gen, gen.manifest())
        report = verify(gen, archives=True)
    except Damaged as e:
        report = VerifyReport(gen.id, problems=[str(e)])
    if not report.ok:
        for p in report.problems:
            out.write(f"DAMAGED: {p}\n")
        out.write(f"generation {gen.id} is damaged: nothing was written to any disk; restore "
                  "another generation (steward backup list)\n")
        return 1
    if args.plan:
        out.write(f"archives intact: {report.checked} files, {human(report.bytes)}\n")
        out.write("--plan: nothing written\n")
        return 0
    out.write(f"generation whole: every archive intact ({report.checked} files, "
              f"{human(report.bytes)}); each is hashed again as it is extracted\n")
    checked = clock.monotonic() - checking
    if not args.yes and not _confirmed(plan, stdin, out):
        out.write("aborted: nothing was written\n")
        return 1
    return execute(plan, runner, args.mount_dir, out,
                   lambda *a, **k: restore(*a, hash_first=False, **k), checked=checked,
                   clock=clock)


def _cpu() -> tuple[float, float]:
    """CPU seconds so far: this process's, its ended children's (zstd, tar)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class _Times:
    """Seconds per part of the restore, for the report's "time:" line; the check before
    writing counts (waiting for the disk names to be typed does not)."""

    def __init__(self, checked: float, clock: Clock) -> None:
        self.clock = clock
        self.parts: list[tuple[str, float]] = [("check before writing", checked)]
        self.last = clock.monotonic()
        self.started = self.last - checked

    def lap(self, what: str) -> float:
        now = self.clock.monotonic()
        took, self.last = now - self.last, now
        self.parts.append((what, took))
        return took


def execute(plan: Plan, runner: CommandRunner, mount_dir: Path, out: TextIO,
            restore: Callable[..., Any], *, checked: float = 0.0,
            clock: Clock | None = None) -> int:
    from usbimage import restoredisk, restorefix

    clock = clock or Clock()
    times = _Times(checked, clock)
    lines: list[str] = []

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    run = restoredisk.Runner(runner, say)
    try:
        restoredisk.partition(plan, run)
        restoredisk.lvm(plan, run)
        restoredisk.make_filesystems(plan, run)
        with restoredisk.mounted_tree(plan, mount_dir, run) as root:
            times.lap("disks (partitions, LVM, filesystems, mounts)")
            say(f"extracting {plan.generation.id} into {root}")
            was = _cpu()
            sel = restore(plan.generation, ["/"], root, say=lambda _: None, devices=True)
            cpu = [b - a for a, b in zip(was, _cpu())]
            for line in sel.refused:
                say(line)
            if sel.refused_count:
                raise restoredisk.RestoreError(
                    f"{sel.refused_count} members of {plan.generation.id} refused: they would "
                    f"have been written outside {root} (the drive's generation is not what "
                    "steward wrote)")
            lines.append(f"extracted {sel.entries} entries in "
                         f"{times.lap('extraction (read, sha256, zstd, tar)'):.0f} s (CPU: "
                         f"steward {cpu[0]:.1f} s reading, hashing, checking members; zstd "
                         f"and tar {cpu[1]:.1f} s)")
            lines += restorefix.fix_all(plan, root, run, times.lap)
            runner.run(["sync"], timeout=600)  # the restore is done once it is on the disks
            fixing = sum(s for what, s in times.parts[3:])
            lines.append(f"boot fixes took {fixing:.0f} s")
            times.lap("sync")
            lines.append("time: " + ", ".join(f"{w} {t:.1f} s" for w, t in times.parts))
            lines.append(f"took {clock.monotonic() - times.started:.0f} s")
            for line in lines:
                say(line)
            _write_report(root, plan, lines, run.done, clock.now())
        runner.run(["sync"], timeout=600)
    except (restoredisk.RestoreError, OSError, StoreError, ArchiveError) as e:
        from backup.jail import Mismatch

        then = ("restore another generation (steward backup list)"
                if isinstance(e, Mismatch) else "fix the cause and run steward restore again")
        out.write(f"steward: restore FAILED: {e}\nSteps done: {'; '.join(run.done) or 'none'}"
                  f"\nThe disks are partly written: {then}.\n")
        return 1
    finally:
        restoredisk.deactivate(plan, run)
    out.write(f"restore of {plan.generation.id} done: report in /{REPORT} of the restored "
              "system. Remove the USB drive and reboot.\n")
    return 0


def _write_report(root: Path, plan: Plan, lines: list[str], steps: list[str],
                  now: float) -> None:
    path = root / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [f"steward restore, {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(now))}",
            "", text(plan),
            "Result:", *[f"  {x}" for x in lines], "", "Steps:", *[f"  {s}" for s in steps]]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(body) + "\n")
    os.chmod(path, 0o600)


def run(args: argparse.Namespace, runner: CommandRunner | None = None, *,
        mount_dir: str = "/run/steward/usb", stdin: TextIO | None = None,
        out: TextIO | None = None) -> int:
    """The command; StoreError (no such generation, unreadable layout) is exit 2."""
    runner = runner or CommandRunner()
    stdin, out = stdin or sys.stdin, out or sys.stdout
    if os.geteuid() != 0 and not args.plan:
        raise UsageError("steward restore writes disks: run it as root")
    try:
        if args.target is not None:
            gen = _generation(Store(args.target), args.generation)
            return restore_command(args, runner, gen, stdin=stdin, out=out)
        from usbimage.drive import GENERATIONS, find_drives, mounted, select

        drive = select(find_drives(runner), args.device)
        with mounted(drive, mount_dir, runner) as mnt:
            gen = _generation(Store(mnt.path / GENERATIONS), args.generation)
            return restore_command(args, runner, gen, stdin=stdin, out=out)
    except StoreError as e:
        raise UsageError(str(e)) from None


def _command(args: argparse.Namespace, setup: Setup) -> int:
    from usbimage.options import UsbOptions

    _, env = setup(args, checks=False)
    return run(args, env.commands, mount_dir=env.config.section(UsbOptions).mount_dir)


COMMAND = Command(add_parser, {"restore": _command}, order=48)
