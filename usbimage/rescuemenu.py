"""The rescue system's PID 1 (stage 2, chrooted into /steward of the initramfs): find the
steward drive, mount it read-only, restore the generation picked in the boot menu (it still
asks before writing a disk), then offer the other generations, a shell, reboot, power off.

PID 1 must never exit (the kernel would panic): every error is printed and the menu comes
back."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from agent.errors import UsageError
from agent.system.commands import CommandError, CommandRunner
from backup.store import Store, StoreError
from usbimage import restorecli
from usbimage.drive import GENERATIONS, Drive, find_drives

MOUNT = Path("/mnt/drive")
RB_AUTOBOOT, RB_POWER_OFF = 0x01234567, 0x4321FEDC
WAIT_DRIVE = 60.0


def cmdline(path: str = "/proc/cmdline") -> dict[str, str]:
    """``steward.*`` kernel parameters, without the prefix."""
    try:
        words = Path(path).read_text().split()
    except OSError:
        return {}
    out = {}
    for w in words:
        key, _, value = w.partition("=")
        if key.startswith("steward."):
            out[key[len("steward."):]] = value or "1"
    return out


def _say(text: str) -> None:
    print(text, flush=True)


def find_drive(runner: CommandRunner, wait: float = WAIT_DRIVE) -> Drive | None:
    """The steward drive; USB disks can take seconds to show up after the drivers load."""
    deadline = time.monotonic() + wait
    while True:
        drives = find_drives(runner)
        if len(drives) == 1:
            return drives[0]
        if len(drives) > 1:
            _say("several steward drives are attached: " + "; ".join(d.describe()
                                                                     for d in drives))
            return drives[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(1)


def mount_drive(drive: Drive, runner: CommandRunner) -> Path:
    MOUNT.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(MOUNT):
        runner.run(["mount", "-o", "ro", drive.device, str(MOUNT)], timeout=120)
    return MOUNT / GENERATIONS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steward")
    sub = p.add_subparsers(dest="command")
    restorecli.add_parser(sub, lambda _: None)
    return p


def restore(gen: str, target: Path, runner: CommandRunner) -> int:
    args = _parser().parse_args(["restore", gen, "--target", str(target)])
    try:
        return restorecli.run(args, runner)
    except UsageError as e:
        _say(f"steward: {e}")
        return 2


def power(how: int) -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(ctypes.c_int(how))
    _say(f"reboot(2) failed: {os.strerror(ctypes.get_errno())}")


def shell() -> None:
    sh = next((s for s in ("/bin/bash", "/bin/sh") if os.access(s, os.X_OK)), "/bin/sh")
    _say("rescue shell: steward restore --help; exit returns to the menu")
    env = dict(os.environ, PS1="steward-rescue# ")
    subprocess.call([sh, "-i"], env=env)


def menu(target: Path | None, runner: CommandRunner) -> None:
    while True:
        gens = []
        if target is not None:
            with contextlib.suppress(StoreError):
                gens = Store(target).generations()
        _say("\nsteward rescue")
        for n, g in enumerate(reversed(gens), 1):
            try:
                m = g.manifest()
                state = "verified" if g.verified(m) else "NOT verified"
                _say(f"  {n}) restore {m.get('host', '?')} from {g.id} ({m.get('created')}, "
                     f"{state})")
            except StoreError as e:
                _say(f"  {n}) {g.id}: {e}")
        _say("  s) shell   r) reboot   p) power off")
        sys.stdout.write("choose: ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer.isdigit() and 1 <= int(answer) <= len(gens) and target is not None:
            restore(list(reversed(gens))[int(answer) - 1].id, target, runner)
        elif answer == "s":
            shell()
        elif answer == "r":
            power(RB_AUTOBOOT)
        elif answer == "p":
            power(RB_POWER_OFF)


def main() -> None:
    runner = CommandRunner()
    params = cmdline()
    target: Path | None = None
    try:
        if os.path.isdir("/sys/firmware/efi/efivars") and not os.path.ismount(
                "/sys/firmware/efi/efivars"):
            runner.run(["mount", "-t", "efivarfs", "efivarfs", "/sys/firmware/efi/efivars"],
                       timeout=30, ok_codes=range(256))
        if restorecli.active_vgs():  # the initramfs's udev may have started some
            runner.run(["lvm", "vgchange", "-an"], timeout=120, ok_codes=range(256))
        _say("steward rescue: looking for the steward drive")
        drive = find_drive(runner)
        if drive is None:
            _say("no steward drive found (STEWARD-DATA): plug it in and choose the menu again, "
                 "or use the shell")
        else:
            target = mount_drive(drive, runner)
            _say(f"steward drive {drive.describe()} mounted read-only on {MOUNT}")
            if params.get("restore") and not params.get("shell"):
                restore(params["restore"], target, runner)
    except (CommandError, OSError) as e:
        _say(f"steward rescue: {e}")
    while True:
        try:
            menu(target, runner)
        except Exception:  # PID 1 must not die
            traceback.print_exc()
            time.sleep(1)


if __name__ == "__main__":
    main()
