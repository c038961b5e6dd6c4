"""Keep the drive's rescue system current: after each whole-system backup to the drive (and
by ``steward usb rescue``) rebuild it when the kernel or steward changed, install the boot
loaders with it, and rewrite the boot menu so it lists every generation on the drive."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.fileio import fsync_dir, write_atomic
from agent.system.commands import CommandError, CommandRunner
from backup.progress import human
from backup.store import Store
from usbimage import rescue, rescueboot
from usbimage.drive import GENERATIONS, Mounted

if TYPE_CHECKING:
    from backup.create import Outcome


def refresh(data_root: Path, disk: str, runner: CommandRunner, say: Callable[[str], None], *,
            force: bool = False, kernel: str | None = None) -> list[str]:
    """Rebuild the rescue system on the drive mounted at ``data_root`` if it is stale (or
    ``force``), reinstall the boot loaders then, and always rewrite the menu. ``kernel``: an
    installed kernel other than the running one. Raises RescueError when it cannot be built;
    the drive keeps its old rescue system then."""
    release = kernel or rescue.kernel_release()
    want = rescue.stamp(release)
    why = "asked to" if force else rescue.stale(data_root, want)
    notes = []
    if why:
        say(f"rescue: building the rescue system ({why})")
        home = data_root / rescue.HOME
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="steward-rescue-") as tmp:
            tree = Path(tmp) / "steward"
            tree.mkdir()
            try:
                notes += rescue.build_tree(tree, runner, say, release)
                say("rescue: making the initramfs (a minute or more)")
                initrd = Path(tmp) / "initrd.img"
                how = rescue.distro_initramfs(release, initrd, runner)
                rescue.cpio(tree, initrd, rescue.compressor(release))
            except (CommandError, OSError) as e:
                raise rescue.RescueError(f"the rescue system could not be built: {e}") from None
            for name, src in (("vmlinuz", rescue.kernel_image(release)), ("initrd.img", initrd)):
                part = home / f".{name}.partial"
                shutil.copyfile(src, part)
                with open(part, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(part, home / name)
            fsync_dir(home)
            write_atomic(home / "rescue.json", json.dumps(want, indent=1) + "\n")
            size = (home / "initrd.img").stat().st_size
        notes.append(f"rescue system rebuilt ({why}): kernel {release}, initramfs by {how} "
                     f"with Python and steward ({human(size)})")
        notes += rescueboot.install(disk, data_root, runner, say)
    else:
        notes.append(f"rescue system current (kernel {release}, steward {want['steward']})")
    (data_root / GENERATIONS).mkdir(mode=0o700, exist_ok=True)
    count = rescueboot.write_menu(data_root, Store(data_root / GENERATIONS))
    notes.append(f"boot menu: {count} generation{'s' if count != 1 else ''} to restore, and a "
                 "shell")
    return notes


def after_backup(mnt: Mounted, outcome: Outcome) -> list[str]:
    """The backup step: whole-system generations only (a folder backup is not restored bare
    metal). A failure is a problem of the run, not of the committed generation."""
    from backup.create import BackupError

    if outcome.manifest.get("source") != "/":
        return ["rescue system: not refreshed (this backup holds a folder, not the system)"]
    try:
        return refresh(mnt.path, mnt.drive.disk, CommandRunner(), lambda s: print(s, flush=True))
    except rescue.RescueError as e:
        raise BackupError(f"the drive's rescue system is out of date: {e}") from None
