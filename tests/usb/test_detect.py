"""Drive detection: transport, identity, partitions and usage over fake sysfs trees (copied from
real layouts), and over this machine's /sys.

No USB disk exists on the test machine (a VM with virtio), so the USB and UAS cases can only be
shown on a fake sysfs tree; its layout is that of real machines, e.g. /sys/block/sda ->
../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sda
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.usb.fakesys import NVME, SATA, UAS, USB_STORAGE, VIRTIO, VIRTUAL, FakeSys
from usbimage import detect
from usbimage.inuse import disks_of, parse_mountinfo, parse_swaps, stack, system_disks, usage

GiB = 2**30


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSys:
    return FakeSys(tmp_path / "sys")


def usb_stick(fs: FakeSys, uas: bool = False, via_proc_name: bool = True) -> None:
    parent = UAS if uas else USB_STORAGE
    usb_dev = parent.split("/host")[0].rsplit("/", 1)[0]  # .../usb2/2-1
    fs.usb_device(usb_dev, serial="4C530001230515117394", vendor="SanDisk", product="Ultra",
                  interface_driver="uas" if uas else "usb-storage")
    host = parent.split("/target")[0]  # .../2-1:1.0/host6
    if via_proc_name:
        hostname = os.path.basename(host)
        fs.write(f"{host}/scsi_host/{hostname}/proc_name", "uas" if uas else "usb-storage")
    fs.write(f"{parent}/vendor", "SanDisk ")
    fs.write(f"{parent}/model", "Ultra           ")
    name, devno = ("sdb", "8:16") if uas else ("sda", "8:0")
    fs.disk(parent, name, devno, 32 * GiB, removable=True,
            partitions=[(f"{name}1", f"{devno[:-1]}{int(devno[-1]) + 1}", 32 * GiB - 2**20)])


def test_a_usb_storage_disk_is_usb_with_the_usb_devices_serial(sysfs):
    usb_stick(sysfs)
    disk = detect.read_disk("sda", str(sysfs.root))
    assert disk.transport == "usb" and disk.usb
    assert (disk.vendor, disk.model, disk.serial) == ("SanDisk", "Ultra", "4C530001230515117394")
    assert disk.removable and not disk.read_only and disk.size == 32 * GiB
    assert [(p.name, p.number, p.path) for p in disk.partitions] == [("sda1", 1, "/dev/sda1")]


@pytest.mark.parametrize("via_proc_name", [True, False], ids=["scsi-host-proc-name",
                                                              "interface-driver"])
def test_a_usb_attached_scsi_disk_is_uas(sysfs, via_proc_name):
    usb_stick(sysfs, uas=True, via_proc_name=via_proc_name)
    disk = detect.read_disk("sdb", str(sysfs.root))
    assert disk.transport == "uas" and disk.usb
    assert disk.serial == "4C530001230515117394"


def test_vendor_and_model_fall_back_to_the_usb_devices_strings(sysfs):
    sysfs.usb_device(USB_STORAGE.split("/2-1:1.0")[0], serial="S1", vendor="Kingston",
                     product="DataTraveler")
    sysfs.disk(USB_STORAGE, "sda", "8:0", 8 * GiB)
    disk = detect.read_disk("sda", str(sysfs.root))
    assert (disk.vendor, disk.model, disk.serial) == ("Kingston", "DataTraveler", "S1")


def test_virtio_nvme_sata_and_loop_disks_are_not_usb(sysfs):
    sysfs.write(f"{VIRTIO}/vendor", "0x1af4")
    sysfs.disk(VIRTIO, "vda", "254:0", 20 * GiB, attrs={"serial": "disk-1"})
    sysfs.write(f"{NVME}/model", "Samsung SSD 980 PRO 1TB")
    sysfs.write(f"{NVME}/serial", "S5GXNF0R123456")
    sysfs.write(f"{NVME}/transport", "pcie")
    sysfs.disk(NVME, "nvme0n1", "259:0", 1000 * GiB)
    sysfs.write(f"{SATA}/vendor", "ATA")
    sysfs.write(f"{SATA}/model", "WDC WD40EFRX-68N")
    sysfs.disk(SATA, "sdc", "8:32", 4000 * GiB)
    sysfs.disk(VIRTUAL, "loop3", "7:3", 2 * GiB)
    root = str(sysfs.root)
    got = {n: detect.read_disk(n, root) for n in ("vda", "nvme0n1", "sdc", "loop3")}
    assert {n: d.transport for n, d in got.items()} == {
        "vda": "virtio", "nvme0n1": "nvme", "sdc": "ata", "loop3": "loop"}
    assert not any(d.usb for d in got.values())
    assert got["vda"].serial == "disk-1"
    assert (got["nvme0n1"].model, got["nvme0n1"].serial) == ("Samsung SSD 980 PRO 1TB",
                                                              "S5GXNF0R123456")


def test_list_shows_usb_disks_by_default_and_every_disk_with_all(sysfs):
    usb_stick(sysfs)
    sysfs.disk(VIRTIO, "vda", "254:0", 20 * GiB)
    sysfs.disk(VIRTUAL, "loop0", "7:0", 2 * GiB)
    sysfs.disk(VIRTUAL, "loop1", "7:1", 0)  # not attached: no medium, never listed
    root = str(sysfs.root)
    default = detect.list_disks(sysfs_root=root, mountinfo_text="", swaps_text="")
    assert [d.name for d in default] == ["sda"]
    every = detect.list_disks(all_disks=True, sysfs_root=root, mountinfo_text="",
                              swaps_text="")
    assert [(d.name, d.transport) for d in every] == [("loop0", "loop"), ("sda", "usb"),
                                                      ("vda", "virtio")]
    js = every[1].to_json()
    assert js["candidate"] and js["usb"] and not js["steward"]
    assert js["partitions"][0]["number"] == 1


def lvm_system(fs: FakeSys) -> None:
    """vda: /boot on vda1, an LVM PV on vda2 with the root LV; sdb: swap on sdb2."""
    fs.disk(VIRTIO, "vda", "254:0", 20 * GiB,
            partitions=[("vda1", "254:1", GiB), ("vda2", "254:2", 19 * GiB)])
    fs.stacked("dm-0", "253:0", 18 * GiB, on=["vda2"], dm_name="rhel-root")
    fs.disk(SATA, "sdb", "8:16", 100 * GiB,
            partitions=[("sdb1", "8:17", 90 * GiB), ("sdb2", "8:18", 8 * GiB)])
    usb_stick(fs)


MOUNTINFO = r"""22 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/rhel-root rw
23 22 254:1 / /boot rw,relatime shared:2 - xfs /dev/vda1 rw
24 22 0:21 / /proc rw - proc proc rw
25 22 8:1 / /mnt/usb\040stick rw - ext4 /dev/sda1 rw
26 22 8:17 / /data rw - ext4 /dev/sdb1 rw
"""
SWAPS = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2  partition\t8388604\t0\t-2\n"


def test_system_disks_follow_partitions_lvm_and_swap(sysfs):
    lvm_system(sysfs)
    root = str(sysfs.root)
    assert system_disks(MOUNTINFO, SWAPS, root) == {"vda", "sdb"}
    assert system_disks(MOUNTINFO, "", root) == {"vda"}  # /data is no system mount
    assert system_disks("", "", root) == set()


def test_usage_names_mounts_swaps_and_devices_built_on_the_disk(sysfs):
    lvm_system(sysfs)
    root = str(sysfs.root)
    assert stack("vda", root) == ["vda", "vda1", "vda2", "dm-0"]
    assert usage("vda", MOUNTINFO, SWAPS, root, check_open=False) == [
        "/dev/dm-0 is mounted on /", "/dev/vda1 is mounted on /boot",
        "/dev/dm-0 (rhel-root) is built on it"]
    assert usage("sdb", MOUNTINFO, SWAPS, root, check_open=False) == [
        "/dev/sdb1 is mounted on /data", "/dev/sdb2 is in use as swap (/dev/sdb2)"]
    assert usage("sda", MOUNTINFO, "", root, check_open=False) == [
        "/dev/sda1 is mounted on /mnt/usb stick"]
    assert usage("sda", "", "", root, check_open=False) == []
    disk = detect.describe("sda", mountinfo_text=MOUNTINFO, swaps_text="", sysfs_root=root)
    assert disk.in_use and not disk.system and disk.usb


def test_mountinfo_and_swaps_parsers_unescape_paths():
    assert parse_mountinfo(MOUNTINFO)[3] == ("8:1", "/dev/sda1", "/mnt/usb stick")
    assert parse_swaps(SWAPS + "/swap\\040file file 10 0 -3\n") == ["/dev/sdb2", "/swap file"]


vda = pytest.mark.skipif(not os.path.exists("/sys/block/vda"), reason="no /sys/block/vda")


@vda
def test_this_machines_virtio_disk_is_listed_with_all_as_virtio_and_no_candidate():
    from agent.system.commands import CommandRunner

    every = {d.name: d for d in detect.list_disks(all_disks=True, runner=CommandRunner())}
    assert every["vda"].transport == "virtio"
    assert not every["vda"].to_json()["candidate"]
    assert "vda" not in {d.name for d in detect.list_disks()}


def test_the_disk_under_this_machines_root_holds_the_running_system():
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    dev = os.stat("/").st_dev
    node = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    if not os.path.exists(node):
        pytest.skip("/ is not on a block device here (overlay, tmpfs, ...)")
    root_disks = disks_of(os.path.basename(os.path.realpath(node)))
    assert root_disks and root_disks <= system_disks(mountinfo, "")
