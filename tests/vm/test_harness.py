"""The qemu harness itself: console cleaning (fast), and the server disk, which prepares,
then boots from SeaBIOS and from OVMF (slow).

Measured on the 2-core development machine (TCG, -smp 2): rootfs build ~70 s cold, 0 s
cached; disk build ~14 s; first prep boot (GRUB install) ~48 s, later ones ~22 s;
firmware boot to the marker and power-off ~30 s each (BIOS and UEFI).  About 2.5 minutes
with a warm cache.
"""
from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm.machine import VM, Firmware, clean_console, fresh_nvram, skip_reason
from tests.vm.server import (
    MARKER_SELINUX,
    MARKER_TEXT,
    ServerDisk,
    build_server_rootfs,
    make_server_disk,
    parse_marker,
    prep_boot,
)

_SKIP = skip_reason()
_CONSOLE = ("\x1b[2J\x1b[01;01HBdsDxe: starting\r\n\x1b[0m\x1b[37m\x1b[40m  *Debian\x1b[K\r"
            "\x1b]0;title\x07GNU GRUB\x1b(B\x1b7 done\x1b8\r\nMARKER-DONE\r\n\xe2\x94\x8c ok")


def test_console_is_cleaned_the_same_however_it_is_split() -> None:
    """Escape sequences, \\r\\n and UTF-8 characters cut across reads."""
    raw = _CONSOLE.encode("latin-1")
    whole = clean_console(raw.decode())
    assert whole == "BdsDxe: starting\n  *Debian\nGNU GRUB done\nMARKER-DONE\n\u250c ok"
    for cut in range(len(raw) + 1):
        vm = VM()
        decoder = codecs.getincrementaldecoder("utf-8")()
        for chunk in [c for c in (raw[:cut], raw[cut:]) if c] + [b""]:  # b"": EOF
            vm._feed(chunk, decoder.decode(chunk, final=not chunk))
        assert vm.output == whole, cut


def _timed(timings: dict[str, float], name: str, fn: Callable[[], object]) -> object:
    started = time.monotonic()
    try:
        return fn()
    finally:
        timings[name] = round(time.monotonic() - started, 1)


def _boot_marker(image: Path, fw: Firmware, nvram: Path | None, log: Path,
                 root_uuid: str) -> None:
    with VM([(image, "virtio")], firmware=fw, nvram=nvram, log=log) as vm:
        vm.expect(r"Booting from Hard Disk" if fw == "bios" else r"BdsDxe: starting Boot", 120)
        vm.expect(r"GNU GRUB", 120)
        vm.expect(rf"Command line: BOOT_IMAGE=\S*vmlinuz\S* root=UUID={root_uuid} ", 120)
        vm.expect(r"^MARKER-DONE$", 300)  # expect() may match a line still arriving
        m = parse_marker(vm.output)
        assert m is not None, vm.output[-3000:]
        assert m["content"] == MARKER_TEXT
        assert m["selinux"] == MARKER_SELINUX
        assert m["srv"] == ""  # /srv is a folder of / here (it is on LVM once SRV_ON_LVM ran)
        assert m["caps"].endswith("cap_net_bind_service=ep"), m
        assert vm.wait(120) == 0


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")
def test_server_disk_preps_and_boots_with_bios_and_uefi(
        tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    timings: dict[str, float] = {}
    console = tmp_path / "console.log"  # every run's serial output, for post-mortems
    rootfs = _timed(timings, "rootfs", build_server_rootfs)
    assert isinstance(rootfs, Path)
    image = tmp_path / "server.img"
    disk = _timed(timings, "disk", lambda: make_server_disk(rootfs, image))
    assert isinstance(disk, ServerDisk)
    usb = tmp_path / "usb.img"
    with open(usb, "wb") as fh:
        fh.truncate(64 << 20)

    out = _timed(timings, "prep (GRUB install)", lambda: prep_boot(
        image, usb, "steward --help | head -3\nlsblk\n", "bios", 900, log_file=console))
    assert isinstance(out, str)
    assert re.search(r"^PREP-GRUB-RC=0$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^PREP-RC=0$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^usage: steward", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^sda\s+8:0\s.*\bdisk\b", out, re.MULTILINE), out[-3000:]

    out = _timed(timings, "prep again (no GRUB)", lambda: prep_boot(
        image, None, "test -s /boot/efi/EFI/BOOT/BOOTX64.EFI\n", "uefi", 600,
        log_file=console))
    assert isinstance(out, str)
    assert re.search(r"^PREP-GRUB=skipped$", out, re.MULTILINE), out[-3000:]
    assert re.search(r"^PREP-RC=0$", out, re.MULTILINE), out[-3000:]

    _timed(timings, "boot BIOS", lambda: _boot_marker(image, "bios", None, console,
                                                      disk.root_uuid))
    nvram = fresh_nvram(tmp_path / "OVMF_VARS.fd")
    _timed(timings, "boot UEFI", lambda: _boot_marker(image, "uefi", nvram, console,
                                                      disk.root_uuid))
    for name, seconds in timings.items():
        record_property(f"seconds {name}", seconds)
    print("timings (s):", timings)
