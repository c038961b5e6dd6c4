"""The disaster-recovery promise end to end, under qemu (TCG):

1. a small Debian server (tests.vm.server) moves /srv onto LVM with the devices file on, as
   EL9 installs it, formats a USB stick with steward and backs itself up to it twice — once
   booted with UEFI (OVMF), once with BIOS (SeaBIOS) — so the stick carries two whole-system
   generations and the rescue system (built on the first, current on the second);
2. BIOS: a blank disk of the same size takes the server disk's place, and the old disk stays
   attached beside it (cold standby: its UUIDs are in use, so the restore makes new ones — the
   PV's too, which the devices file must then be told —, fixes fstab and GRUB, rebuilds the
   initramfs, and keeps LVM off the old disk's volume group of the same name); the stick
   boots (SeaBIOS -> GRUB i386-pc -> the rescue system), the default menu entry restores the
   newest generation after the disk name is typed; the restored disk then boots on its own
   and its marker file, on the LVM volume, has its content, SELinux label and capability;
3. UEFI: a larger blank disk; the stick boots through OVMF; the newest generation is declined
   at the prompt, the older (UEFI) one picked in the rescue menu and restored, its firmware
   boot entry made in the persistent NVRAM (and not again when the same restore is repeated);
   the restored disk boots through that entry with the same marker.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm.machine import VM, fresh_nvram, skip_reason
from tests.vm.server import (
    MARKER_CAPS,
    MARKER_SELINUX,
    MARKER_TEXT,
    SERVER_SERIAL,
    SRV_ON_LVM,
    GiB,
    build_server_rootfs,
    make_server_disk,
    parse_marker,
    prep_boot,
)

pytestmark = [pytest.mark.slow, pytest.mark.root,
              pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]
SIZE = 2 * GiB
# The server also gets its distribution's GRUB at EFI/debian (not only the removable path), as
# an installed system has: the restore makes the firmware entry for it.
FIRST = """set -ex
""" + SRV_ON_LVM + """
grub-install --target=x86_64-efi --efi-directory=/boot/efi --bootloader-id=debian --no-nvram
steward usb format /dev/sda --yes
steward backup create --usb
"""
SECOND = """set -ex
steward backup create --usb
steward backup list --target /dev/null 2>/dev/null || true
"""


BLANK_SERIAL = "steward-blank"  # the new disk is another disk: LVM must be told


@dataclass
class Stick:
    server: Path  # the old disk, as it was at the second backup
    usb: Path
    gens: list[str]  # oldest first: [uefi generation, bios generation]
    logs: Path
    backup_s: list[float]  # each generation's backup time, as `backup create` reported it


def _gen_ids(console: str) -> list[str]:
    return re.findall(r"generation (\d{8}T\d{6}Z) committed in", console)


def _backup_s(console: str) -> float:
    found = re.findall(r"generation \d{8}T\d{6}Z committed in .*?, ([0-9.]+) s, read back",
                       console)
    assert found, console[-4000:]
    return float(found[-1])


def _times(what: str, out: str, backup_s: float, full_s: float, logs: Path) -> None:
    """The restore's time beside the backup's, printed (run with -s) and kept in the logs."""
    took = re.findall(r"^took (\d+) s$", out, re.M)
    parts = re.findall(r"^time: (.*)$", out, re.M)  # the restore's parts, in seconds
    cpu = re.findall(r"^extracted \d+ entries in \d+ s \(CPU: (.*)\)$", out, re.M)
    assert took and parts and cpu, out[-3000:]
    line = (f"E2E-TIMES {what}: restore {took[-1]} s, backup of this generation "
            f"{backup_s:.1f} s, full backup of the system {full_s:.1f} s, restore/full "
            f"{int(took[-1]) / full_s:.2f}; {parts[-1]}; extraction CPU: {cpu[-1]}")
    print(line)
    with open(logs / "times.log", "a") as fh:
        fh.write(line + "\n")


@pytest.fixture(scope="module")
def stick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stick]:
    base = tmp_path_factory.mktemp("rescue")
    rootfs = build_server_rootfs()
    server, usb = base / "server.img", base / "usb.img"
    make_server_disk(rootfs, server, SIZE)
    with open(usb, "wb") as fh:
        fh.truncate(2 * GiB)
    gens, times = [], []
    for n, (firmware, script) in enumerate((("uefi", FIRST), ("bios", SECOND)), 1):
        nvram = fresh_nvram(base / f"prep{n}.vars") if firmware == "uefi" else None
        console = prep_boot(server, usb, script, firmware, timeout=1500, nvram=nvram,
                            log_file=base / f"prep{n}.log", memory=1536)
        assert "PREP-RC=0" in console, console[-4000:]
        found = _gen_ids(console)
        assert found, console[-4000:]
        gens.append(found[-1])
        times.append(_backup_s(console))
        if n == 1:
            # Debian's lvm (2.03.16) names a virtio disk by its device name; EL9's by WWID or
            # serial. Either way, an entry stops matching once the PV gets a new UUID.
            assert re.search(r"^IDTYPE=\w+ IDNAME=\S+ DEVNAME=/dev/vda4 PVID=", console,
                             re.M), console[-6000:]
            assert "rescue system rebuilt" in console, console[-4000:]
            assert "BIOS boot: GRUB i386-pc on /dev/sda" in console
            assert "UEFI boot: EFI/BOOT/BOOTX64.EFI" in console
        else:
            assert "rescue system current" in console, console[-4000:]
            assert "boot menu: 2 generations to restore" in console
    yield Stick(server, usb, gens, base, times)


def _restore(vm: VM, disk: str = "vda") -> str:
    vm.expect(r"generation whole", 900)
    vm.expect(r"Type the name of the disk to overwrite \(vda\)", 60)
    vm.sendline(disk)
    done = vm.expect(r"restore of \d{8}T\d{6}Z done|restore FAILED.*", 1800)
    assert "done" in done.group(0), vm.output[-6000:]
    return vm.output


def _boots_with_marker(disk: Path, firmware: str, nvram: Path | None, log: Path) -> None:
    with VM([(disk, "virtio")], firmware=firmware, nvram=nvram, memory=1024,
            log=log, serials=[BLANK_SERIAL]) as vm:
        if firmware == "uefi":  # through the boot entry the restore made, on the new ESP
            vm.expect(r'^BdsDxe: starting Boot[0-9A-F]{4} "debian" from HD\(2,GPT', 300)
        vm.expect(r"^MARKER-DONE$", 900)  # the MARKER line is whole by then
        m = parse_marker(vm.output)
        assert m is not None, vm.output[-3000:]
        assert m["content"] == MARKER_TEXT
        assert m["selinux"] == MARKER_SELINUX
        assert m["srv"] == "/dev/mapper/vgsrv-srv", m  # LVM found the PV on the new disk
        assert MARKER_CAPS.replace("+", "=") in m["caps"], m
        vm.wait(300)


def test_bios_rescue_boot_restores_onto_a_blank_disk_of_the_same_size(stick: Stick,
                                                                       tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as fh:
        fh.truncate(SIZE)
    with VM([(blank, "virtio"), (stick.server, "virtio"), (stick.usb, "usb")],
            firmware="bios", boot_usb_first=True, memory=1536, serials=[BLANK_SERIAL,
            SERVER_SERIAL], scratch=[1], log=stick.logs / "bios-rescue.log") as vm:
        vm.expect(rf"steward: restore .* from {stick.gens[1]}", 300)  # the menu, both listed
        vm.expect(rf"steward: restore .* from {stick.gens[0]}", 30)
        vm.expect(r"steward drive /dev/sd\w+\d .* mounted read-only", 600)
        out = _restore(vm)
        assert f"Restore generation {stick.gens[1]}" in out
        assert "some saved UUIDs are in use on this machine" in out
        assert re.search(r"^UUIDs replaced in /etc/fstab, /boot/grub/grub.cfg", out, re.M), out
        assert "boot loader: GRUB (i386-pc) installed on /dev/vda" in out
        assert "LVM devices file: /dev/vda4 listed" in out
        assert "SELinux" in out
        # the new UUIDs are in fstab and grub.cfg only: Debian's initramfs finds the root by
        # the kernel's root= and reads the real root's fstab; its lvm has no devices file yet
        assert "initramfs: kept for" in out, out[-3000:]
        _times("BIOS", out, stick.backup_s[1], stick.backup_s[0], stick.logs)
        vm.expect(r"choose: ", 120)
        vm.sendline("p")
        vm.wait(120)
    _boots_with_marker(blank, "bios", None, stick.logs / "bios-restored.log")


def test_uefi_rescue_boot_restores_an_older_generation_onto_a_larger_disk(stick: Stick,
                                                                          tmp_path: Path) -> None:
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as fh:
        fh.truncate(SIZE + GiB)
    nvram = fresh_nvram(tmp_path / "vars.fd")
    with VM([(blank, "virtio"), (stick.usb, "usb")], firmware="uefi", nvram=nvram,
            boot_usb_first=True, memory=1536, serials=[BLANK_SERIAL],
            log=stick.logs / "uefi-rescue.log") as vm:
        vm.expect(r"Type the name of the disk to overwrite \(vda\)", 1200)
        vm.sendline("no")  # not the newest (a BIOS generation): the older one, from the menu
        vm.expect(r"aborted: nothing was written", 60)
        vm.expect(rf"2\) restore .* from {stick.gens[0]}", 60)
        vm.expect(r"choose: ", 30)
        vm.sendline("2")
        out = _restore(vm)
        assert f"Restore generation {stick.gens[0]}" in out
        assert "grown to the end of the disk" in out
        assert "/dev/vgsrv/srv: logical volume" in out
        assert "LVM devices file: /dev/vda4 listed" in out
        # this initramfs was made before the devices file was (by SRV_ON_LVM): nothing to fix
        assert "initramfs: kept for" in out and "(it has the drivers the disks need" in out
        _times("UEFI", out, stick.backup_s[0], stick.backup_s[0], stick.logs)
        assert re.search(r"boot loader: firmware entry 'debian' -> \\EFI\\debian\\grubx64.efi",
                         out), out[-4000:]
        vm.expect(r"choose: ", 120)
        vm.sendline("2")  # the same restore again: its firmware entry is not added twice
        out = _restore(vm)
        assert "firmware entry 'debian' (\\EFI\\debian\\grubx64.efi) is there already; " \
            "none added" in out, out[-3000:]
        vm.expect(r"choose: ", 120)
        vm.sendline("p")
        vm.wait(120)
    _boots_with_marker(blank, "uefi", nvram, stick.logs / "uefi-restored.log")
