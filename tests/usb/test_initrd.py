"""When the restore rebuilds the initramfs: images made here with the real cpio and
compressors (and this machine's own initramfs), read by usbimage.initrd, judged by
restorefix.initramfs_needs; the restored system's own dracut / update-initramfs runs chrooted
(a recorder under busybox) only when the image would not boot on the new disks."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.system.commands import CommandRunner
from tests.usb.fakesys import VIRTIO, FakeSys
from tests.usb.test_restorefix_el9 import (
    KVER,
    NEW_ROOT,
    OLD_ROOT,
    RECORDER,
    _busybox_chroot,
    _plan,
    _write,
)
from usbimage import initrd, restorefix
from usbimage.restoredisk import Runner

PV_OLD = "AbCdEf-1234-5678-9abc-defg-hijk-lmnopq"
MOD = f"usr/lib/modules/{KVER}/kernel/drivers"


def _cpio(tree: Path) -> bytes:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    return subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input="\n".join(
        names).encode(), cwd=tree, capture_output=True, check=True, timeout=60).stdout


def _image(tmp: Path, files: dict[str, str], compress: list[str] | None = None,
           early: bool = True) -> Path:
    """An initramfs as dracut and mkinitramfs write it: an uncompressed early cpio with the
    microcode, then the main cpio compressed."""
    compress = ["zstd", "-q"] if compress is None else compress
    tree, micro = tmp / "tree", tmp / "early"
    for rel, text in files.items():
        _write(tree, rel, text)
    _write(micro, "kernel/x86/microcode/GenuineIntel.bin", "\x00microcode" * 100)
    main = _cpio(tree)
    if compress:
        main = subprocess.run([*compress, "-c"], input=main, capture_output=True, check=True,
                              timeout=60).stdout
    out = tmp / "initrd.img"
    out.write_bytes((_cpio(micro) if early else b"") + main)
    return out


DRACUT = {f"{MOD}/block/virtio_blk.ko.xz": "x" * 3000,
          f"{MOD}/nvme/host/nvme-core.ko.xz": "x",
          "etc/cmdline.d/95root-dev.conf": f" root=UUID={OLD_ROOT} rootflags=rw,relatime\n",
          "etc/lvm/lvm.conf": "devices { }\n"}
TOOLS = {f"{MOD}/block/virtio_blk.ko": "x", "conf/initramfs.conf": "MODULES=most\n",
         "etc/fstab": f"UUID={OLD_ROOT} / ext4 defaults 0 1\n",
         "etc/lvm/backup/vg0": f'pv0 {{ id = "{PV_OLD}" }}\n'}


@pytest.mark.parametrize("compress", [["zstd", "-q"], ["gzip"], ["xz", "--check=crc32"],
                                      ["lz4", "-l", "-q"], []])
def test_the_names_and_configuration_files_of_every_compression(
        tmp_path: Path, compress: list[str] | None) -> None:
    if compress and shutil.which(compress[0]) is None:
        pytest.skip(f"{compress[0]} is not installed")
    got = initrd.read(str(_image(tmp_path, DRACUT, compress)))
    assert "kernel/x86/microcode/GenuineIntel.bin" in got.names  # the early archive
    assert f"{MOD}/block/virtio_blk.ko.xz" in got.names  # and the main one after it
    assert {"virtio_blk", "nvme_core"} <= got.modules()
    assert got.files["etc/cmdline.d/95root-dev.conf"].decode().strip().startswith(
        f"root=UUID={OLD_ROOT}")
    assert not any(n.startswith("usr/") for n in got.files)  # modules are skipped, not kept


def test_this_machines_own_initramfs() -> None:
    images = sorted(glob.glob("/boot/initrd.img-*") + glob.glob("/boot/initramfs-*.img"))
    if not images:
        pytest.skip("no initramfs in /boot")
    got = initrd.read(images[-1])
    assert len(got.names) > 100 and got.modules(), got.names[:20]
    assert any(n.endswith(("conf/initramfs.conf", "etc/initrd-release")) for n in got.names)


@pytest.mark.parametrize("data,what", [
    (b"", "empty file"), (b"not an initramfs at all", "unknown compression"),
    (b"070701" + b"0" * 50, "truncated"),
    (b"070701" + b"0" * 88 + b"FFFFFFFF" + b"0" * 8 + b"x", "cpio name of"),
])
def test_what_is_not_an_initramfs_says_so(tmp_path: Path, data: bytes, what: str) -> None:
    (tmp_path / "bad.img").write_bytes(data)
    with pytest.raises(initrd.InitrdError, match=what):
        initrd.read(str(tmp_path / "bad.img"))


def test_a_truncated_compressed_image_is_an_error_not_a_short_listing(tmp_path: Path) -> None:
    image = _image(tmp_path, DRACUT, ["gzip"])
    image.write_bytes(image.read_bytes()[:-200])
    with pytest.raises(initrd.InitrdError):
        initrd.read(str(image))
    image = _image(tmp_path / "z", DRACUT)
    image.write_bytes(image.read_bytes()[:-200])
    with pytest.raises(initrd.InitrdError):
        initrd.read(str(image))


def test_the_decision(tmp_path: Path) -> None:
    dracut = initrd.read(str(_image(tmp_path / "d", DRACUT)))
    renamed = {OLD_ROOT: NEW_ROOT}
    virtio = {"virtio_blk", "virtio_pci"}
    # virtio_pci built in (modules.builtin); no UUID that changed, no devices file change
    assert restorefix.initramfs_needs(dracut, virtio, {"virtio_pci"}, {}, True) == ""
    assert restorefix.initramfs_needs(dracut, virtio, set(), {}, False) == \
        "it has no driver for virtio_pci"
    assert restorefix.initramfs_needs(dracut, {"nvme", "nvme_core"}, set(), {}, False) == \
        "it has no driver for nvme"
    # dracut's host-only cmdline names the root by the UUID it had (any case)
    assert restorefix.initramfs_needs(dracut, set(), set(), {OLD_ROOT: NEW_ROOT},
                                      False) == \
        f"its /etc/cmdline.d/95root-dev.conf names the old UUID {OLD_ROOT}"
    with_devices = initrd.read(str(_image(tmp_path / "v", {
        **DRACUT, restorefix.DEVICES_FILE: "IDTYPE=devname IDNAME=/dev/vda4 PVID=x\n"})))
    assert restorefix.initramfs_needs(with_devices, set(), set(), {}, True) == \
        "it holds the LVM devices file, which changed"
    assert restorefix.initramfs_needs(with_devices, set(), set(), {}, False) == ""
    # initramfs-tools: its fstab copy and LVM's metadata history are not read at boot
    tools = initrd.read(str(_image(tmp_path / "t", TOOLS, ["gzip"], early=False)))
    assert restorefix.initramfs_needs(tools, {"virtio_blk"}, set(),
                                      {**renamed, PV_OLD.lower(): "x"}, False) == ""
    resume = initrd.read(str(_image(tmp_path / "r", {
        **TOOLS, "conf/conf.d/resume": f"RESUME=UUID={OLD_ROOT}\n"}, ["gzip"])))
    assert restorefix.initramfs_needs(resume, set(), set(), renamed, False) == \
        f"its /conf/conf.d/resume names the old UUID {OLD_ROOT}"


def _sysroot(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    root = tmp_path / "sysroot"
    _write(root, f"boot/vmlinuz-{KVER}", "kernel")
    _write(root, "boot/vmlinuz-5.14.0-1.el9.x86_64", "older kernel")
    shutil.copy(_image(tmp_path / "img", files), root / f"boot/initramfs-{KVER}.img")
    shutil.copy(_image(tmp_path / "img2", DRACUT), root / "boot/initramfs-5.14.0-1.el9"
                ".x86_64.img")
    sys = FakeSys(tmp_path / "sys")
    sys.disk(VIRTIO, "vdz", "252:0", 10 * 2**30)
    sys.link(f"{VIRTIO}/driver", "bus/virtio/drivers/virtio_blk")
    sys.link("bus/virtio/drivers/virtio_blk/module", "module/virtio_blk")
    sys.link("devices/pci0000:00/0000:00:02.0/driver", "bus/pci/drivers/virtio-pci")
    sys.link("bus/pci/drivers/virtio-pci/module", "module/virtio_pci")
    return root, str(sys.root)


@pytest.mark.root
def test_rebuilt_host_only_for_the_kernel_whose_image_would_not_boot_and_kept_otherwise(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    files = {**DRACUT, f"{MOD}/virtio/virtio_pci.ko.xz": "x"}
    files.pop("etc/cmdline.d/95root-dev.conf")
    root, sysfs = _sysroot(tmp_path, files)
    _busybox_chroot(root)
    _write(root, "usr/bin/dracut", RECORDER, 0o755)
    said: list[str] = []
    run = Runner(CommandRunner(), said.append)
    plan = _plan(tmp_path, {OLD_ROOT: NEW_ROOT})
    got = restorefix.initramfs(plan, root, run, sysfs_root=sysfs)
    # the older kernel's image names the old root UUID and has no virtio_pci; the newest has
    # both drivers and no UUID: kept, and nothing ran for it
    assert got == ("initramfs: rebuilt host-only for 5.14.0-1.el9.x86_64 (it has no driver for "
                   f"virtio_pci); kept for {KVER}"), got
    assert (root / "recorded").read_text().splitlines() == [
        "/usr/bin/dracut -f --hostonly /boot/initramfs-5.14.0-1.el9.x86_64.img "
        "5.14.0-1.el9.x86_64"]
    assert said == ["rebuild the initramfs of 5.14.0-1.el9.x86_64 host-only (it has no driver "
                    "for virtio_pci)"]
    (root / "recorded").unlink()
    shutil.copy(root / f"boot/initramfs-{KVER}.img", root / "boot/initramfs-5.14.0-1.el9"
                ".x86_64.img")
    got = restorefix.initramfs(plan, root, run, sysfs_root=sysfs)
    assert got.startswith("initramfs: kept for 5.14.0-1.el9.x86_64, " + KVER), got
    assert "virtio_blk, virtio_pci" in got and not (root / "recorded").exists()
