"""The restore's boot fix-ups on a sysroot with EL9's layout, where EL9's tools cannot run
here: BLS entries, grubenv's kernelopts, /etc/kernel/cmdline and the ESP's grub.cfg stub get
the new UUIDs; the restored system's own dracut and grub2-install run chrooted (recorder
scripts under a real busybox shell); the firmware entry is EL9's shim under
/boot/efi/EFI/almalinux/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.system.commands import CommandRunner
from backup.store import Generation
from usbimage import rescueboot, restorefix
from usbimage.detect import Disk
from usbimage.restoredisk import Runner
from usbimage.restoreplan import Lvm, NewFs, Plan, Target

OLD_ROOT, NEW_ROOT = "0f3c9a7e-1111-4a2b-9c3d-aaaaaaaaaaaa", "5b6e2d10-2222-4c3d-8e4f-bbbbbbbbbbbb"
OLD_BOOT, NEW_BOOT = "7d1e0c55-3333-4e5f-a061-cccccccccccc", "9a8b7c6d-4444-4f60-b172-dddddddddddd"
KVER = "5.14.0-427.13.1.el9_4.x86_64"
BLS = (f"title AlmaLinux (5.14.0-427.13.1.el9_4.x86_64) 9.4 (Seafoam Ocelot)\n"
       f"version {KVER}\nlinux /vmlinuz-{KVER}\ninitrd /initramfs-{KVER}.img $tuned_initrd\n"
       f"options root=UUID={OLD_ROOT.upper()} ro crashkernel=1G-4G:192M rhgb quiet\n"
       "grub_users $grub_users\ngrub_arg --unrestricted\ngrub_class almalinux\n")
RECORDER = "#!/bin/sh\necho \"$0 $*\" >> /recorded\n"


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _el9_sysroot(root: Path) -> None:
    _write(root, f"boot/loader/entries/3c5e1f2a-{KVER}.conf", BLS)
    _write(root, "boot/grub2/grubenv",
           f"# GRUB Environment Block\nsaved_entry=3c5e1f2a-{KVER}\n"
           f"kernelopts=root=UUID={OLD_ROOT} ro rhgb quiet\nboot_success=0\n")
    _write(root, "etc/kernel/cmdline", f"root=UUID={OLD_ROOT} ro crashkernel=1G-4G:192M\n")
    _write(root, "boot/efi/EFI/almalinux/grub.cfg",
           f"search --no-floppy --fs-uuid --set=dev {OLD_BOOT}\nset prefix=($dev)/grub2\n"
           "export $prefix\nconfigfile $prefix/grub.cfg\n")
    _write(root, "boot/efi/EFI/almalinux/shimx64.efi", "MZ")
    _write(root, "boot/efi/EFI/almalinux/grubx64.efi", "MZ")
    _write(root, "boot/efi/EFI/BOOT/BOOTX64.EFI", "MZ")
    _write(root, "etc/fstab", f"UUID={OLD_ROOT} / xfs defaults 0 0\n"
           f"UUID={OLD_BOOT} /boot xfs defaults 0 0\n")
    _write(root, f"boot/vmlinuz-{KVER}", "kernel")
    _write(root, f"boot/initramfs-{KVER}.img", "old initramfs")


def _plan(tmp_path: Path, renames: dict[str, str]) -> Plan:
    disk = Disk(name="vdz", path="/dev/vdz", size=10 * 2**30, removable=False, read_only=False,
                transport="virtio", vendor="", model="", serial="")
    saved = {"name": "/dev/vda", "partition_table": {"label": "gpt", "partitions": [
        {"node": "/dev/vda1", "uuid": "11111111-2222-4333-8444-555555555555"}]}}
    target = Target(saved=saved, disk=disk, script="",
                    parts={"/dev/vda1": "/dev/vdz1", "/dev/vda2": "/dev/vdz2",
                           "/dev/vda3": "/dev/vdz3"})
    fss = [NewFs("/dev/vda1", "/dev/vdz1", "vfat", "ABCD-1234", None, mountpoint="/boot/efi"),
           NewFs("/dev/vda2", "/dev/vdz2", "xfs", OLD_BOOT, None, mountpoint="/boot"),
           NewFs("/dev/vda3", "/dev/vdz3", "xfs", OLD_ROOT, None, mountpoint="/")]
    (tmp_path / "gen").mkdir()
    return Plan(generation=Generation(tmp_path / "gen"), manifest={}, layout={},
                targets=[target], filesystems=fss, lvm=Lvm(), boot_mode="uefi",
                renames=renames)


def test_new_uuids_reach_bls_entries_grubenv_kernel_cmdline_and_the_esp_stub(
        tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    _el9_sysroot(root)
    bls = next((root / "boot/loader/entries").glob("*.conf"))
    ino = bls.stat().st_ino
    changed = restorefix.rename_uuids(_plan(tmp_path, {OLD_ROOT: NEW_ROOT, OLD_BOOT: NEW_BOOT}),
                                      root)
    assert sorted(changed) == sorted([
        "/etc/fstab", "/etc/kernel/cmdline", "/boot/grub2/grubenv",
        f"/boot/loader/entries/{bls.name}", "/boot/efi/EFI/almalinux/grub.cfg"])
    # upper-case in the BLS entry (as blkid never prints, but an admin may write) matched too
    assert f"options root=UUID={NEW_ROOT} ro crashkernel" in bls.read_text()
    assert bls.stat().st_ino == ino  # same inode: owner, mode, SELinux label kept
    assert f"kernelopts=root=UUID={NEW_ROOT} ro" in (root / "boot/grub2/grubenv").read_text()
    assert (root / "etc/kernel/cmdline").read_text().startswith(f"root=UUID={NEW_ROOT} ")
    assert f"--set=dev {NEW_BOOT}\n" in (root / "boot/efi/EFI/almalinux/grub.cfg").read_text()
    for path in root.rglob("*"):
        if path.is_file():
            assert OLD_ROOT not in path.read_text().lower(), path
            assert OLD_BOOT not in path.read_text().lower(), path


def test_grubenv_keeps_its_1024_byte_block_when_a_uuid_is_replaced(tmp_path: Path) -> None:
    """grub2-editenv's file is a fixed 1024-byte block padded with '#'; GRUB rejects it at
    boot when its size differs. UUIDs have one length, so the block stays 1024 bytes."""
    root = tmp_path / "sysroot"
    body = f"# GRUB Environment Block\nkernelopts=root=UUID={OLD_ROOT} ro\n"
    _write(root, "boot/grub2/grubenv", body + "#" * (1024 - len(body)))
    restorefix.rename_uuids(_plan(tmp_path, {OLD_ROOT: NEW_ROOT}), root)
    got = (root / "boot/grub2/grubenv").read_bytes()
    assert len(got) == 1024 and NEW_ROOT.encode() in got


def _busybox_chroot(root: Path) -> None:
    """A shell that runs inside ``root``: the host's busybox and the libraries it links."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    out = subprocess.run(["ldd", busybox], check=False, capture_output=True, text=True,
                         timeout=30).stdout
    for lib in [busybox, *(w for line in out.splitlines() for w in line.split()
                           if w.startswith("/"))]:
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), dest)
    (root / "bin").mkdir(exist_ok=True)
    os.symlink(busybox, root / "bin/sh")


@pytest.mark.root
def test_el9_takes_its_own_dracut_grub2_install_and_the_almalinux_shim(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "sysroot"
    _el9_sysroot(root)
    _busybox_chroot(root)
    _write(root, "usr/bin/dracut", RECORDER, 0o755)  # EL9: /usr/bin/dracut
    _write(root, "usr/sbin/grub2-install", RECORDER, 0o755)
    _write(root, "usr/sbin/update-initramfs", RECORDER, 0o755)  # never chosen over dracut
    _write(root, "usr/sbin/grub-install", RECORDER, 0o755)  # nor grub-install over grub2-
    plan = _plan(tmp_path, {OLD_ROOT: NEW_ROOT})
    said: list[str] = []
    run = Runner(CommandRunner(), said.append)
    why = "it cannot be read: unknown compression (starts 6f6c6420)"  # "old initramfs"
    assert restorefix.initramfs(plan, root, run) == \
        f"initramfs: rebuilt host-only for {KVER} ({why})"
    assert restorefix.bios_loader(plan, root, run) == \
        "boot loader: GRUB (i386-pc) installed on /dev/vdz"
    assert (root / "recorded").read_text().splitlines() == [
        f"/usr/bin/dracut -f --hostonly /boot/initramfs-{KVER}.img {KVER}",
        "/usr/sbin/grub2-install --target=i386-pc /dev/vdz"]
    assert said == [f"rebuild the initramfs of {KVER} host-only ({why})",
                    "install GRUB for BIOS on /dev/vdz"]
    got = restorefix.uefi_loader(plan, root, run)
    if os.path.isdir("/sys/firmware/efi"):
        pytest.skip("this machine booted with UEFI: efibootmgr would change its entries")
    assert "'almalinux' (\\EFI\\almalinux\\shimx64.efi)" in got, got


def test_the_shim_is_chosen_over_grub_and_the_fallback_boot_dir_never(tmp_path: Path) -> None:
    root = tmp_path / "sysroot"
    _write(root, "boot/efi/EFI/BOOT/shimx64.efi", "MZ")
    _write(root, "boot/efi/EFI/rocky/grubx64.efi", "MZ")
    assert restorefix._fallback_entry(root) == {
        "label": "rocky", "loader": "\\EFI\\rocky\\grubx64.efi", "partuuid": ""}
    _write(root, "boot/efi/EFI/rocky/shimx64.efi", "MZ")
    assert restorefix._fallback_entry(root)["loader"] == "\\EFI\\rocky\\shimx64.efi"


@pytest.mark.root
def test_debian_takes_update_initramfs_where_it_is_when_there_is_no_dracut(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "sysroot"
    _write(root, f"boot/vmlinuz-{KVER}", "kernel")
    _busybox_chroot(root)
    _write(root, "sbin/update-initramfs", RECORDER, 0o755)  # not merged-/usr
    run = Runner(CommandRunner(), lambda _: None)
    assert restorefix.initramfs(_plan(tmp_path, {OLD_ROOT: NEW_ROOT}), root, run) == \
        f"initramfs: rebuilt by update-initramfs for {KVER} (there is none)"
    assert (root / "recorded").read_text() == f"/sbin/update-initramfs -c -k {KVER}\n"


def test_the_rescue_drive_takes_the_hosts_signed_shim_and_grub_of_its_vendor_dir(
        tmp_path: Path) -> None:
    root = tmp_path / "host"
    _write(root, "boot/efi/EFI/BOOT/shimx64.efi", "MZ")  # the removable-media copy: never
    _write(root, "boot/efi/EFI/BOOT/grubx64.efi", "MZ")
    _write(root, "boot/efi/EFI/redhat/shimx64.efi", "MZ")  # a shim without its GRUB: not a chain
    assert rescueboot._signed_loaders(str(root)) is None
    _write(root, "boot/efi/EFI/almalinux/shimx64.efi", "MZ")
    _write(root, "boot/efi/EFI/almalinux/grubx64.efi", "MZ")
    esp = root / "boot/efi/EFI"
    assert rescueboot._signed_loaders(str(root)) == (
        f"{esp}/almalinux/shimx64.efi", f"{esp}/almalinux/grubx64.efi", "almalinux")
