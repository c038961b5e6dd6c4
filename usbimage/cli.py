"""``steward usb list|format``: find the USB drive for backups and the rescue system, and
prepare it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from agent.commands import Command, Setup
from agent.system.commands import CommandRunner
from backup.progress import human

if TYPE_CHECKING:
    from agent.env import Env


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    u = sub.add_parser("usb", help="the USB backup and rescue drive: list, format, rescue",
                       description="Find and prepare the USB drive that carries the backups "
                       "and boots the rescue system.")
    common(u)
    usub = u.add_subparsers(dest="usb_command", metavar="ACTION")
    usub.required = True
    ls = usub.add_parser("list", help="the USB disks attached",
                         description="The disks attached over USB (usb-storage or UAS): size, "
                         "model, serial, partitions and labels, whether steward's data "
                         "partition (STEWARD-DATA) is on it, whether it is in use. Exit 0, "
                         "also when none is found.")
    common(ls)
    ls.add_argument("--format", choices=("text", "json"), default="text")
    ls.add_argument("--all", action="store_true",
                    help="every disk (loop devices included) with its transport, to see why "
                    "one is not a candidate")
    f = usub.add_parser("format", help="make a disk a steward drive (destroys its content)",
                        description="Write GPT with a 1 MiB BIOS boot partition, a 256 MiB "
                        "EFI system partition (FAT32, STEWARD-EFI) and an ext4 data partition "
                        "(STEWARD-DATA) on the rest. Shows what will be destroyed and asks to "
                        "type the device name. Refused (exit 2): a partition, a read-only or "
                        "smaller than 1 GiB disk, a disk in use (mounted, swap, LVM/md) even "
                        "with --force; a disk that is not USB or holds the running system "
                        "unless --force. Exit 0 formatted, 1 aborted or failed.")
    common(f)
    f.add_argument("device", metavar="DEVICE", help="the whole disk, e.g. /dev/sdb or "
                   "/dev/disk/by-id/usb-...")
    f.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    f.add_argument("--force", action="store_true",
                   help="also format a disk that is not USB, or that holds the running "
                   "system (never a mounted one)")
    r = usub.add_parser("rescue", help="build or refresh the drive's rescue system",
                        description="Put this host's kernel and an initramfs with Python and "
                        "steward on the steward drive, install GRUB for BIOS and UEFI on it, "
                        "and write the boot menu (every whole-system generation, a shell). "
                        "Done after each whole-system backup --usb anyway when the kernel or "
                        "steward changed; this does it now. Exit 0 done, 1 failed, 2 no or "
                        "several drives.")
    common(r)
    r.add_argument("--device", metavar="DEV", help="which steward drive, when several are "
                   "attached")
    r.add_argument("--force", action="store_true", help="rebuild even when it is current")
    r.add_argument("--kernel", metavar="VERSION", help="an installed kernel (as in "
                   "/boot/vmlinuz-VERSION) instead of the running one, e.g. a new kernel "
                   "before the reboot")


def run(args: argparse.Namespace, env: Env | None = None, *, stdin: TextIO | None = None,
        out: TextIO | None = None, err: TextIO | None = None,
        system_mountinfo: str | None = None) -> int:
    """``steward usb ...``. ``env`` is the agent's Env (its command runner is used).
    ``stdin``/``out``/``err`` and ``system_mountinfo`` (replaces /proc/self/mountinfo for the
    holds-the-running-system check) are for tests only."""
    runner = env.commands if env is not None else CommandRunner()
    out = out or sys.stdout
    if args.usb_command == "list":
        return _list(args, runner, out)
    if args.usb_command == "rescue":
        return _rescue(args, runner, env, out, err or sys.stderr)
    from usbimage.format import format_command

    return format_command(args.device, yes=args.yes, force=args.force, runner=runner,
                          stdin=stdin or sys.stdin, out=out, err=err or sys.stderr,
                          system_mountinfo=system_mountinfo)


def _list(args: argparse.Namespace, runner: CommandRunner, out: TextIO) -> int:
    from usbimage.detect import list_disks

    disks = list_disks(all_disks=args.all, runner=runner)
    if args.format == "json":
        out.write(json.dumps({"disks": [d.to_json() for d in disks]}, indent=1) + "\n")
        return 0
    if not disks:
        out.write("no USB disk found (steward usb list --all shows every disk)\n"
                  if not args.all else "no disks found\n")
    for d in disks:
        ident = " ".join(x for x in (d.vendor, d.model) if x) or "-"
        notes = [n for n, on in (("removable", d.removable), ("read-only", d.read_only),
                                 ("steward drive", d.steward is not None)) if on]
        if not d.usb:
            notes.append(f"not a candidate: not USB ({d.transport})")
        if d.system:
            notes.append("holds the running system")
        if d.in_use:
            notes.append("in use")
        out.write(f"{d.path}  {d.transport}  {human(d.size)}  {ident}"
                  f"{f'  serial {d.serial}' if d.serial else ''}"
                  f"{'  (' + ', '.join(notes) + ')' if notes else ''}\n")
        if d.fstype:
            out.write(f"    whole disk: {d.fstype}{f' {d.label!r}' if d.label else ''}\n")
        for p in d.partitions:
            labels = "".join(f"  {k} {v!r}" for k, v in (("label", p.label),
                                                        ("partlabel", p.partlabel)) if v)
            out.write(f"    {p.path}  {human(p.size)}  {p.fstype or '-'}{labels}\n")
        for reason in d.in_use:
            out.write(f"    in use: {reason}\n")
    return 0


def _rescue(args: argparse.Namespace, runner: CommandRunner, env: Env | None, out: TextIO,
            err: TextIO) -> int:
    from usbimage.drive import MountError, find_drives, mounted, select
    from usbimage.options import UsbOptions
    from usbimage.rescue import RescueError
    from usbimage.rescuestep import refresh

    usb = env.config.section(UsbOptions) if env is not None else UsbOptions()
    drive = select(find_drives(runner), args.device)

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        with mounted(drive, usb.mount_dir, runner) as mnt:
            for line in refresh(mnt.path, drive.disk, runner, say, force=args.force,
                                kernel=args.kernel):
                say(line)
    except (RescueError, MountError, OSError) as e:
        err.write(f"steward: {e}\n")
        return 1
    return 0


def _command(args: argparse.Namespace, setup: Setup) -> int:
    _, env = setup(args, checks=False)
    return run(args, env)


COMMAND = Command(add_parsers, {"usb": _command}, order=45)
