"""Make the steward drive boot its rescue system, on BIOS and UEFI machines, with a menu entry
for every whole-system generation on it (not only the newest) and a shell.

- BIOS: GRUB i386-pc, core image in the drive's BIOS boot partition, modules and the menu in
  boot/grub on the data partition (``grub2-install``/``grub-install``; needs the i386-pc
  modules: grub2-pc-modules on EL9, grub-pc-bin on Debian).
- UEFI: EFI/BOOT/BOOTX64.EFI on the drive's EFI partition. On EL9 the signed shim and GRUB of
  the host are copied there (grub2-install refuses EFI targets), so the drive boots with Secure
  Boot on; elsewhere a standalone GRUB image (grub-mkstandalone). Written with mtools: the
  FAT partition is never mounted.
- Both GRUBs read the one menu, boot/grub/grub.cfg on the data partition (found by its label),
  rewritten after every backup and every retention.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.fileio import write_atomic
from agent.system.commands import CommandError, CommandRunner
from backup.layout import which
from backup.store import Generation, Store, StoreError
from usbimage.detect import DATA_LABEL, EFI_LABEL, blkid
from usbimage.rescue import HOME

T_GRUB = 600.0
CONSOLE = "console=tty0 console=ttyS0,115200"
STUB = (f"search --no-floppy --label {DATA_LABEL} --set=root\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n")
EFI_MODULES = ("part_gpt part_msdos fat ext2 search search_label search_fs_uuid normal linux "
               "configfile echo test serial terminal all_video gzio zstd sleep reboot halt")
_MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def menu(generations: Sequence[tuple[Generation, dict[str, Any]]], timeout: int = 10) -> str:
    """grub.cfg: a restore entry per whole-system generation (newest first, the default: it
    still asks before writing any disk) and a rescue shell."""
    lines = ["serial --unit=0 --speed=115200",
             "terminal_input serial console", "terminal_output serial console",
             f"set timeout={timeout}", "set default=0",
             f"search --no-floppy --label {DATA_LABEL} --set=root", ""]
    boot = f"/{HOME}/vmlinuz rdinit=/steward/init {CONSOLE}"
    for gen, manifest in reversed(generations):
        state = "verified" if gen.verified(manifest) else "NOT VERIFIED"
        title = (f"steward: restore {manifest.get('host', '?')} from {gen.id} "
                 f"({manifest.get('created', '?')}, {state})")
        lines += [f"menuentry {_quote(title)} {{",
                  f"    linux {boot} steward.restore={gen.id}",
                  f"    initrd /{HOME}/initrd.img", "}"]
    lines += ["menuentry 'steward: rescue shell (restore nothing)' {",
              f"    linux {boot} steward.shell=1", f"    initrd /{HOME}/initrd.img", "}"]
    return "\n".join(lines) + "\n"


def whole_system(store: Store) -> list[tuple[Generation, dict[str, Any]]]:
    out = []
    for g in store.generations():
        try:
            m = g.manifest()
        except StoreError:  # a damaged generation is not offered
            continue
        if m.get("source") == "/":
            out.append((g, m))
    return out


def write_menu(data_root: Path, store: Store) -> int:
    gens = whole_system(store)
    (data_root / "boot/grub").mkdir(parents=True, exist_ok=True)
    write_atomic(data_root / "boot/grub/grub.cfg", menu(gens))
    return len(gens)


def _partitions(disk: str, runner: CommandRunner) -> dict[str, str]:
    """Label -> partition path on ``disk`` (sdb), and "bios" -> the BIOS boot partition."""
    out: dict[str, str] = {}
    for sysdir in sorted(glob.glob(f"/sys/block/{disk}/{disk}*")):
        node = f"/dev/{os.path.basename(sysdir)}"
        try:
            found = blkid(runner, node)
        except CommandError:
            continue
        if found.get("LABEL"):
            out[found["LABEL"]] = node
        if found.get("PART_ENTRY_TYPE", "").lower() == "21686148-6449-6e6f-744e-656564454649":
            out["bios"] = node
    return out


def install_bios(disk: str, data_root: Path, runner: CommandRunner) -> str:
    tool = which("grub2-install") or which("grub-install")
    mods = [d for d in ("/usr/lib/grub/i386-pc", "/usr/lib/grub2/i386-pc")
            if os.path.isfile(f"{d}/boot.img")]
    if tool is None or not mods:
        return ("BIOS boot: not installed (no GRUB i386-pc modules here: grub2-pc-modules on "
                "EL9, grub-pc-bin on Debian); the drive boots on UEFI machines only")
    runner.run([tool, "--target=i386-pc", f"--boot-directory={data_root / 'boot'}",
                "--modules=part_gpt part_msdos ext2 search search_label", f"/dev/{disk}"],
               timeout=T_GRUB)
    return f"BIOS boot: GRUB i386-pc on /dev/{disk}"


def _signed_loaders(root: str = "/") -> tuple[str, str, str] | None:
    """(shim, grub, vendor) of an EL-style Secure Boot chain on this host (EFI/redhat,
    almalinux, rocky; not the removable-media EFI/BOOT), if any."""
    esp = os.path.join(glob.escape(root), "boot/efi/EFI")
    for shim in sorted(glob.glob(f"{esp}/*/shimx64.efi")):
        vendor_dir = os.path.dirname(shim)
        grub = os.path.join(vendor_dir, "grubx64.efi")
        if os.path.basename(vendor_dir).upper() != "BOOT" and os.path.isfile(grub):
            return shim, grub, os.path.basename(vendor_dir)
    return None


def install_uefi(esp: str, runner: CommandRunner) -> str:
    mcopy, mmd = which("mcopy"), which("mmd")
    if mcopy is None or mmd is None:
        return "UEFI boot: not installed (mtools is missing); the drive boots on BIOS only"
    mt = CommandRunner(dict(os.environ, **_MTOOLS_ENV))  # no geometry checks on a partition
    with tempfile.TemporaryDirectory(prefix="steward-efi-") as tmp:
        files: dict[str, str] = {}
        stub = os.path.join(tmp, "grub.cfg")
        Path(stub).write_text(STUB)
        signed = _signed_loaders()
        if signed is not None:
            shim, grub, vendor = signed
            files = {"BOOTX64.EFI": shim, "grubx64.efi": grub, "grub.cfg": stub}
            how = f"the host's signed shim and GRUB ({vendor}), Secure Boot capable"
            extra = {f"::/EFI/{vendor}/grub.cfg": stub}
        else:
            tool = which("grub2-mkstandalone") or which("grub-mkstandalone")
            mods = [d for d in ("/usr/lib/grub/x86_64-efi", "/usr/lib/grub2/x86_64-efi")
                    if os.path.isdir(d)]
            if tool is None or not mods:
                return ("UEFI boot: not installed (no shim/GRUB EFI here: shim-x64 and "
                        "grub2-efi-x64 on EL9, grub-efi-amd64-bin on Debian)")
            image = os.path.join(tmp, "BOOTX64.EFI")
            runner.run([tool, "-O", "x86_64-efi", "-o", image, f"--modules={EFI_MODULES}",
                        f"boot/grub/grub.cfg={stub}"], timeout=T_GRUB)
            files, extra = {"BOOTX64.EFI": image}, {}
            how = "a standalone GRUB image (no Secure Boot)"
            vendor = ""
        for d in ("::/EFI", "::/EFI/BOOT", *([f"::/EFI/{vendor}"] if extra else [])):
            mt.run([mmd, "-i", esp, d], timeout=60, ok_codes=range(256))
        for name, src in files.items():
            mt.run([mcopy, "-o", "-i", esp, src, f"::/EFI/BOOT/{name}"], timeout=120)
        for dest, src in extra.items():
            mt.run([mcopy, "-o", "-i", esp, src, dest], timeout=120)
    return f"UEFI boot: EFI/BOOT/BOOTX64.EFI on {esp}: {how}"


def install(disk: str, data_root: Path, runner: CommandRunner,
            say: Callable[[str], None]) -> list[str]:
    """Both boot loaders on the drive; a failure is a line of the report, not an exception."""
    parts = _partitions(disk, runner)
    notes = []
    say("rescue: installing the boot loaders on the drive")
    try:
        notes.append(install_bios(disk, data_root, runner) if "bios" in parts else
                     "BIOS boot: not installed (the drive has no BIOS boot partition: "
                     "steward usb format makes one)")
    except CommandError as e:
        notes.append(f"BIOS boot: FAILED: {e}")
    try:
        notes.append(install_uefi(parts[EFI_LABEL], runner) if EFI_LABEL in parts else
                     f"UEFI boot: not installed (no {EFI_LABEL} partition on the drive)")
    except CommandError as e:
        notes.append(f"UEFI boot: FAILED: {e}")
    return notes
