"""After the files are back: make the restored system boot on the disks it now has.

- UUIDs that had to change are replaced in fstab, crypttab and the boot loader configuration;
- SELinux labels come from the archive; /.autorelabel is written only when they did not;
- BIOS: the restored system's own grub(2)-install writes the boot code (it is not in any
  file); UEFI: the boot loader files came back with the EFI system partition, so only the
  firmware's boot entry is made, with efibootmgr, replacing an entry of the same name and
  loader instead of adding a duplicate on every restore;
- the LVM devices file, where there is one, lists the new PVs instead of the old disks;
- the initramfs is read (``usbimage.initrd``, no tool of the restored system) and rebuilt,
  host-only, only when it lacks a driver for the disks it must now find, names a UUID that
  changed in a file its boot reads, or holds the LVM devices file, which changed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Callable
from pathlib import Path

from usbimage import initrd
from usbimage.restoredisk import T_MKFS, Runner, _tool, chroot_mounts
from usbimage.restoreplan import Plan

CONFIGS = ("etc/fstab", "etc/crypttab", "etc/default/grub", "etc/kernel/cmdline",
           "boot/grub2/grub.cfg", "boot/grub/grub.cfg", "boot/grub2/grubenv",
           "boot/loader/entries/*.conf", "boot/efi/EFI/*/grub.cfg",
           "etc/initramfs-tools/conf.d/resume")
DEVICES_FILE = "etc/lvm/devices/system.devices"
_ENTRY = re.compile(r"^Boot([0-9A-Fa-f]{4})\*?\s+(.*?)\s*(?:\t|\s)(HD\(.*)$")
_HD = re.compile(r"HD\((\d+),GPT,([0-9a-fA-F-]{36})")
_FILE = re.compile(r"(?:File\()?(\\[^)\s]+)")


def rename_uuids(plan: Plan, root: Path) -> list[str]:
    """Replace every old UUID with its new one in the configuration files; the files keep
    their inode (owner, mode, SELinux label). Returns the files changed."""
    if not plan.renames:
        return []
    pattern = re.compile("|".join(re.escape(old) for old in plan.renames), re.IGNORECASE)
    changed = []
    for pat in CONFIGS:
        for path in sorted(glob.glob(str(root / pat))):
            with open(path, "r+", encoding="utf-8", errors="surrogateescape") as fh:
                old = fh.read()
                new = pattern.sub(lambda m: plan.renames[m.group(0).lower()], old)
                if new != old:
                    fh.seek(0)
                    fh.write(new)
                    fh.truncate()
                    changed.append("/" + os.path.relpath(path, root))
    return changed


def selinux(root: Path) -> str:
    """Were the labels restored? Writes /.autorelabel as the fallback when they were not."""
    try:
        config = (root / "etc/selinux/config").read_text(errors="replace")
    except OSError:
        return "SELinux: not configured on the restored system"
    mode = re.search(r"^\s*SELINUX\s*=\s*(\w+)", config, re.MULTILINE)
    if not mode or mode.group(1) == "disabled":
        return "SELinux: disabled on the restored system"
    labelled = 0
    for rel in ("etc", "etc/selinux/config", "usr/bin", "boot"):
        try:
            os.getxattr(root / rel, "security.selinux", follow_symlinks=False)
            labelled += 1
        except OSError:
            pass
    if labelled:
        return "SELinux: labels restored from the archive (no relabel needed)"
    (root / ".autorelabel").touch()
    return ("SELinux: the archive carried no labels; /.autorelabel written, the first boot "
            "relabels the filesystems")


def _chroot_tool(root: Path, *names: str) -> str | None:
    for name in names:
        for d in ("usr/sbin", "usr/bin", "sbin", "bin"):
            if os.access(root / d / name, os.X_OK):
                return f"/{d}/{name}"
    return None


def _boot_disk(plan: Plan) -> str:
    """The new disk holding /boot (or /)."""
    for mp in ("/boot", "/"):
        f = next((f for f in plan.filesystems if f.mountpoint == mp), None)
        if f is None:
            continue
        for t in plan.targets:
            if f.device in t.parts.values() or f.device == t.disk.path:
                return t.disk.path
    return plan.targets[0].disk.path


def bios_loader(plan: Plan, root: Path, run: Runner) -> str:
    tool = _chroot_tool(root, "grub2-install", "grub-install")
    if tool is None:
        return "boot loader: NOT installed: the restored system has no grub2-install/grub-install"
    disk = _boot_disk(plan)
    run.step(f"install GRUB for BIOS on {disk}", [_tool("chroot"), str(root), tool,
             "--target=i386-pc", disk], T_MKFS)
    return f"boot loader: GRUB (i386-pc) installed on {disk}"


def parse_efibootmgr(text: str) -> list[dict[str, str]]:
    """Boot entries of ``efibootmgr -v``: number, label, partition GUID, loader path."""
    out = []
    for line in text.splitlines():
        m = _ENTRY.match(line.strip())
        if not m:
            continue
        hd, path = _HD.search(m.group(3)), _FILE.search(m.group(3).split(")/", 1)[-1])
        out.append({"num": m.group(1), "label": m.group(2).strip(),
                    "partuuid": hd.group(2).lower() if hd else "",
                    "part": hd.group(1) if hd else "",
                    "loader": path.group(1) if path else ""})
    return out


def _current_entry(plan: Plan) -> dict[str, str] | None:
    boot = plan.layout.get("bootloader")
    text = boot.get("efibootmgr") if isinstance(boot, dict) else None
    if not isinstance(text, str):
        return None
    cur = re.search(r"^BootCurrent:\s*([0-9A-Fa-f]{4})", text, re.MULTILINE)
    entries = parse_efibootmgr(text)
    entry = next((e for e in entries if cur and e["num"].upper() == cur.group(1).upper()),
                 None)
    # a disk entry only: a direct kernel boot, a network or shell entry says nothing here
    return entry if entry and entry["partuuid"] and entry["loader"] else None


def _fallback_entry(root: Path) -> dict[str, str] | None:
    """The distribution's own loader on the restored ESP, when the firmware's entry was not
    recorded (shim first: Secure Boot)."""
    for name in ("shimx64.efi", "grubx64.efi"):
        for path in sorted(glob.glob(str(root / "boot/efi/EFI/*" / name))):
            vendor = Path(path).parent.name
            if vendor.upper() != "BOOT":
                return {"label": vendor, "loader": f"\\EFI\\{vendor}\\{name}", "partuuid": ""}
    return None


def uefi_loader(plan: Plan, root: Path, run: Runner) -> str:
    want = _current_entry(plan) or _fallback_entry(root)
    if want is None:
        return ("boot loader: files restored on the EFI system partition; no firmware entry "
                "was recorded, the firmware starts EFI\\BOOT\\BOOTX64.EFI")
    esp = next((f for f in plan.filesystems if f.mountpoint in ("/boot/efi", "/efi")), None)
    if esp is None:
        return "boot loader: NOT set up: the saved EFI system partition was not restored"
    disk = next(t for t in plan.targets if esp.device in t.parts.values())
    number = re.search(r"(\d+)$", esp.device)
    if not os.path.isdir("/sys/firmware/efi"):
        return (f"boot loader: files restored; this machine did not boot with UEFI, so the "
                f"firmware entry {want['label']!r} ({want['loader']}) must be made from a UEFI "
                "boot")
    efibootmgr = _tool("efibootmgr")
    partuuid = next((p.get("uuid", "") for p in disk.saved["partition_table"]["partitions"]
                     if str(p.get("node")) in disk.parts and disk.parts[str(p["node"])] ==
                     esp.device), "")
    partuuid = plan.renames.get(str(partuuid).lower(), str(partuuid)).lower()
    now = parse_efibootmgr(run.step("read the firmware boot entries", [efibootmgr, "-v"],
                                    60, quiet=True))
    same = [e for e in now if e["label"] == want["label"]
            and e["loader"].lower() == want["loader"].lower()]
    if any(e["partuuid"] == partuuid for e in same):
        return (f"boot loader: firmware entry {want['label']!r} ({want['loader']}) is there "
                "already; none added")
    for e in same:
        run.step(f"remove the stale firmware entry Boot{e['num']}", [efibootmgr, "-q", "-b",
                 e["num"], "-B"], 60)
    run.step(f"add the firmware entry {want['label']!r}",
             [efibootmgr, "-q", "--create", "--disk", disk.disk.path, "--part",
              number.group(1) if number else "1", "--label", want["label"], "--loader",
              want["loader"]], 60)
    return f"boot loader: firmware entry {want['label']!r} -> {want['loader']} on {esp.device}"


def _driver_modules(disk: str, sysfs_root: str = "/sys") -> set[str]:
    """Kernel modules on the path from the disk to the bus (virtio_blk, nvme, ahci, ...)."""
    out: set[str] = set()
    path = os.path.realpath(f"{sysfs_root}/block/{os.path.basename(disk)}/device")
    while path.startswith(f"{sysfs_root}/devices"):
        for link in ("driver/module", "module"):
            if os.path.islink(f"{path}/{link}"):
                out.add(os.path.basename(os.path.realpath(f"{path}/{link}")))
        path = os.path.dirname(path)
    return {m.replace("-", "_") for m in out}


def lvm_devices(plan: Plan, root: Path, run: Runner) -> tuple[str, bool]:
    """The LVM devices file (EL9 has one from the installer) names the old disks by their
    hardware IDs: LVM on the restored system would ignore the new PVs, and the root volume
    would not be found. Their entries are replaced with the new devices', by the restored
    system's own lvm. Returns (what was done, "" when there is no such file; changed)."""
    devices = root / DEVICES_FILE
    if not plan.lvm.pvs or not devices.is_file():
        return "", False
    tool = _chroot_tool(root, "lvm")
    if tool is None:
        return "LVM devices file: NOT updated: the restored system has no lvm", False
    cfg = ["--config", "devices { obtain_device_list_from_udev = 0 }", "--nolocking"]
    listed = devices.read_text(errors="replace")
    for dev, pv_uuid, _ in plan.lvm.pvs:
        pvid = pv_uuid.replace("-", "")
        if pvid and f"PVID={pvid}" in listed:
            run.step(f"drop the old disk's PV {pv_uuid} from the LVM devices file",
                     [_tool("chroot"), str(root), tool, "lvmdevices", *cfg, "--yes",
                      "--delpvid", pvid], 60, quiet=True)
        run.step(f"add {dev} to the LVM devices file", [_tool("chroot"), str(root), tool,
                 "lvmdevices", *cfg, "--yes", "--adddev", dev], 60, quiet=True)
    return (f"LVM devices file: {', '.join(d for d, _, _ in plan.lvm.pvs)} listed in "
            f"/{DEVICES_FILE}", True)


# Files an initramfs carries that its boot does not read: LVM's metadata history (Debian's
# hook copies all of /etc/lvm), and initramfs-tools' copy of fstab (its hooks read it when
# the image is made; at boot it reads the real root's /etc/fstab, fixed above).
_UNREAD = ("etc/lvm/archive/", "etc/lvm/backup/")


def initramfs_needs(image: initrd.Initrd, need: set[str], builtin: set[str],
                    renames: dict[str, str], devices_changed: bool) -> str:
    """Why this initramfs would not boot the restored system on its new disks ("" when it
    would): a driver of the disks' path is neither in it nor built into the kernel, one of
    its configuration files (dracut's cmdline.d, crypttab, resume...) names a UUID that
    changed, or it holds the LVM devices file, which changed."""
    missing = sorted(need - image.modules() - builtin)
    if missing:
        return f"it has no driver for {', '.join(missing)}"
    if devices_changed and DEVICES_FILE in image.names:
        return "it holds the LVM devices file, which changed"
    tools = "conf/initramfs.conf" in image.files  # initramfs-tools, not dracut
    old = re.compile("|".join(re.escape(u) for u in sorted(renames)).encode(), re.IGNORECASE)
    for name in sorted(image.files):
        if not renames or name.startswith(_UNREAD) or (tools and name == "etc/fstab"):
            continue
        m = old.search(image.files[name])
        if m:
            return f"its /{name} names the old UUID {m.group(0).decode().lower()}"
    return ""


def initramfs(plan: Plan, root: Path, run: Runner, devices_changed: bool = False,
              sysfs_root: str = "/sys") -> str:
    """Rebuild the initramfs of each kernel only when it would not boot on the new disks
    (see ``initramfs_needs``), and then host-only: for the disks it is on now."""
    kernels = sorted(p.name[len("vmlinuz-"):] for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        return "initramfs: no kernel in /boot of the restored system"
    need: set[str] = set()
    for t in plan.targets:
        need |= _driver_modules(t.disk.path, sysfs_root)
    todo: list[tuple[str, str, str]] = []  # kernel, image, why
    kept = []
    for kver in kernels:
        image = next((p for p in (f"boot/initramfs-{kver}.img", f"boot/initrd.img-{kver}")
                      if (root / p).is_file()), None)
        if image is None:
            todo.append((kver, f"boot/initramfs-{kver}.img", "there is none"))
            continue
        try:
            got = initrd.read(str(root / image))
        except (OSError, initrd.InitrdError) as e:
            todo.append((kver, image, f"it cannot be read: {e}"))
            continue
        builtin: set[str] = set()
        with contextlib.suppress(OSError):
            builtin = {Path(line).name.split(".ko")[0].replace("-", "_") for line in
                       (root / f"usr/lib/modules/{kver}/modules.builtin").read_text()
                       .splitlines() if line}
        why = initramfs_needs(got, need, builtin, plan.renames, devices_changed)
        if why:
            todo.append((kver, image, why))
        else:
            kept.append(kver)
    drivers = ", ".join(sorted(need)) or "built in"
    if not todo:
        return (f"initramfs: kept for {', '.join(kept)} (it has the drivers the disks need: "
                f"{drivers}, and names no UUID that changed)")
    dracut = _chroot_tool(root, "dracut")  # EL9 (and Debian where dracut replaced it)
    update = _chroot_tool(root, "update-initramfs")  # Debian's initramfs-tools
    if not dracut and not update:
        return (f"initramfs: NOT rebuilt ({todo[0][2]}): neither dracut nor update-initramfs "
                "is there")
    done = []
    how = "host-only" if dracut else "by update-initramfs"
    for kver, image, why in todo:
        argv = ([dracut, "-f", "--hostonly", f"/{image}", kver] if dracut else
                [str(update), "-u" if (root / image).is_file() else "-c", "-k", kver])
        run.step(f"rebuild the initramfs of {kver} {how} ({why})",
                 [_tool("chroot"), str(root), *argv], T_MKFS)
        done.append(f"{kver} ({why})")
    also = f"; kept for {', '.join(kept)}" if kept else ""
    return f"initramfs: rebuilt {how} for {'; '.join(done)}{also}"


def fix_all(plan: Plan, root: Path, run: Runner, lap: Callable[[str], float]) -> list[str]:
    """Every fix in order, each one's line; ``lap`` is told when each part ends (its time)."""
    lines = []
    changed = rename_uuids(plan, root)
    if changed:
        lines.append(f"UUIDs replaced in {', '.join(changed)}")
    lines.append(selinux(root))
    lap("UUIDs and SELinux")
    with chroot_mounts(root, run):
        lines.append((uefi_loader if plan.boot_mode == "uefi" else bios_loader)(plan, root, run))
        lap("boot loader")
        devices, listed = lvm_devices(plan, root, run)
        if devices:
            lines.append(devices)
            lap("LVM devices file")
        lines.append(initramfs(plan, root, run, listed))
        lap("initramfs")
    return lines
