"""Storage/boot layout capture: parsers on sample text, capture() on this machine and on loop
devices, and LVM metadata on a loop device (this kernel may lack device-mapper)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from backup import layout
from backup.layout import capture, lvm_vg_free, parse_fstab, parse_os_release, parse_swaps

KEYS = {"format", "captured", "hostname", "kernel", "os_release", "cmdline", "boot_mode",
        "block_devices", "disks", "filesystems", "fstab", "lvm", "md", "swap", "bootloader"}
MiB = 1024 * 1024
not_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def sh(*argv: str, env: dict[str, str] | None = None) -> str:
    full = {**os.environ, **(env or {})}
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60,
                          env=full).stdout


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if layout.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


FSTAB = """\
# /etc/fstab: static file system information.
#
UUID=0a3407de-014b-458b-b5c1-848e92a327a3 /        ext4  errors=remount-ro 0 1
  # indented comment
/dev/mapper/vg0-home  /home  ext4  defaults,nodev  0  2
LABEL=my\\040disk /mnt/my\\040disk xfs noauto
PARTUUID=5f0e8a1c-01 /boot/efi vfat umask=0077
/swapfile none swap sw 0 0
tmpfs /tmp tmpfs
only-two-fields /x
/dev/sdb1 /y ext4 defaults zero 2
/dev/sdc1 /z ext4 defaults 0 2 extra
"""


def test_parse_fstab_fields_defaults_escapes_and_bad_lines():
    entries = parse_fstab(FSTAB)
    assert [e["file"] for e in entries] == ["/", "/home", "/mnt/my disk", "/boot/efi", "none",
                                            "/tmp"]
    root = entries[0]
    assert root == {"spec": "UUID=0a3407de-014b-458b-b5c1-848e92a327a3", "file": "/",
                    "vfstype": "ext4", "mntops": "errors=remount-ro", "freq": 0, "passno": 1}
    assert entries[1]["mntops"] == "defaults,nodev" and entries[1]["passno"] == 2
    assert entries[2]["spec"] == "LABEL=my disk"
    assert entries[2]["mntops"] == "noauto" and entries[2]["freq"] == 0
    assert entries[3]["spec"] == "PARTUUID=5f0e8a1c-01" and entries[3]["passno"] == 0
    assert entries[5] == {"spec": "tmpfs", "file": "/tmp", "vfstype": "tmpfs",
                          "mntops": "defaults", "freq": 0, "passno": 0}
    assert parse_fstab("") == [] and parse_fstab("# nothing\n\n") == []


SWAPS = """\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/vda3                               partition\t2097148\t\t0\t\t-2
/var/swap\\040file                       file\t\t1048572\t\t512\t\t10
/dev/bad                                partition\tlots\t\t0\t\t-3
/dev/short partition
"""


def test_parse_swaps_sizes_escapes_and_bad_lines():
    assert parse_swaps(SWAPS) == [
        {"path": "/dev/vda3", "type": "partition", "size_bytes": 2097148 * 1024, "priority": -2},
        {"path": "/var/swap file", "type": "file", "size_bytes": 1048572 * 1024, "priority": 10},
    ]
    assert parse_swaps("Filename Type Size Used Priority\n") == []


def test_parse_os_release_quoting():
    text = 'NAME="Debian GNU/Linux"\nID=debian\nVERSION_ID="12"\n# c\nPRETTY_NAME=\'A B\'\nbad\n'
    assert parse_os_release(text) == {"NAME": "Debian GNU/Linux", "ID": "debian",
                                      "VERSION_ID": "12", "PRETTY_NAME": "A B"}


def test_capture_on_a_fixture_tree(tmp_path):
    files = {
        "etc/fstab": FSTAB,
        "usr/lib/os-release": 'ID=fixture\nVERSION_ID="9"\n',
        "proc/cmdline": "root=UUID=abc ro quiet\n",
        "proc/mdstat": "Personalities : [raid1]\nunused devices: <none>\n",
        "proc/swaps": "Filename Type Size Used Priority\n",
        "boot/vmlinuz-6.1.0-2-amd64": "", "boot/vmlinuz-6.1.0-1-amd64": "",
        "boot/grub/grub.cfg": "", "boot/grub/grubenv": "",
        "boot/efi/EFI/debian/grub.cfg": "", "boot/efi/EFI/BOOT/BOOTX64.EFI": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "sys/firmware/efi").mkdir(parents=True)

    got = capture(root=str(tmp_path), timeout=30)
    json.dumps(got)
    assert set(got) == KEYS
    assert got["os_release"] == {"ID": "fixture", "VERSION_ID": "9"}
    assert got["cmdline"] == "root=UUID=abc ro quiet"
    assert got["boot_mode"] == "uefi"
    assert len(got["fstab"]) == 6
    assert got["md"]["mdstat"].startswith("Personalities")
    assert got["swap"] == []
    boot = got["bootloader"]
    assert boot["grub_cfg"] == ["/boot/grub/grub.cfg", "/boot/efi/EFI/debian/grub.cfg"]
    assert boot["efi_dirs"] == ["BOOT", "debian"]
    assert boot["kernels"] == ["vmlinuz-6.1.0-1-amd64", "vmlinuz-6.1.0-2-amd64"]
    assert boot["grubenv"] == "/boot/grub/grubenv"
    if layout.which("efibootmgr") is None:
        assert boot["efibootmgr"] == {"error": "efibootmgr: not installed"}


def test_capture_on_an_empty_root_records_errors_not_exceptions(tmp_path):
    got = capture(root=str(tmp_path))
    assert set(got) == KEYS
    assert "error" in got["os_release"] and "error" in got["fstab"]
    assert "error" in got["cmdline"]
    assert got["boot_mode"] == "bios"
    assert got["md"]["mdstat"] is None and got["swap"] == []
    assert got["bootloader"] == {"grub_cfg": [], "efi_dirs": None, "efibootmgr": None,
                                 "kernels": [], "grubenv": None}


def test_capture_this_machine():
    got = capture()
    assert set(got) == KEYS
    text = json.dumps(got)
    assert json.loads(text)["format"] == 1
    assert got["boot_mode"] in ("bios", "uefi")
    assert got["kernel"] == os.uname().release
    assert got["captured"].endswith("+00:00")
    assert isinstance(got["block_devices"], list) or "error" in got["block_devices"]
    if layout.which("lsblk") is not None:
        assert isinstance(got["block_devices"], list)
        assert isinstance(got["disks"], list)
        for disk in got["disks"]:
            assert disk["name"].startswith("/dev/") and disk["size"] > 0
            assert "partition_table" in disk
    if layout.which("findmnt") is not None:
        assert any(fs["target"] == "/" for fs in got["filesystems"])
    # Sections whose tool is missing carry an error instead of raising.
    if layout.which("mdadm") is None:
        assert got["md"]["scan"] == {"error": "mdadm: not installed"}
    if layout.which("lvm") is None and layout.which("pvs") is None:
        assert got["lvm"] == {"error": "lvm2 not installed"}
    else:
        assert set(got["lvm"]) == {"pvs", "vgs", "lvs"}
    if got["boot_mode"] == "uefi" and layout.which("efibootmgr") is None:
        assert got["bootloader"]["efibootmgr"] == {"error": "efibootmgr: not installed"}
    if got["boot_mode"] == "bios":
        assert got["bootloader"]["efibootmgr"] is None


def test_lvm_vg_free_unknown_or_invalid_vg():
    assert lvm_vg_free(None, "-bogus") is None
    assert lvm_vg_free(None, "") is None
    assert lvm_vg_free(None, f"stw-none-{uuid.uuid4().hex[:8]}") is None


@pytest.fixture
def loopdev(tmp_path):
    """Attach image files as loop devices; detach them afterwards."""
    attached: list[str] = []

    def attach(img: Path, size_mb: int = 64) -> str:
        sh("truncate", "-s", f"{size_mb}M", str(img))
        dev = sh("losetup", "--find", "--show", str(img)).strip()
        attached.append(dev)
        return dev

    yield attach
    for dev in reversed(attached):
        subprocess.run(["losetup", "-d", dev], check=False, timeout=60, capture_output=True)


@pytest.mark.root
@not_root
@needs("sfdisk", "losetup", "lsblk")
def test_gpt_loop_device_is_captured_with_its_partition_table(tmp_path, loopdev):
    img = tmp_path / "gpt.img"
    sh("truncate", "-s", "64M", str(img))
    subprocess.run(["sfdisk", "-q", str(img)], input="label: gpt\n,32M,L\n,,L\n", text=True,
                   check=True, capture_output=True, timeout=60)
    dev = loopdev(img)
    got = capture()
    json.dumps(got)
    [disk] = [d for d in got["disks"] if d["name"] == dev]
    assert disk["type"] == "loop" and disk["size"] == 64 * MiB
    table = disk["partition_table"]
    assert table["label"] == "gpt"
    assert len(table["partitions"]) == 2
    assert table["partitions"][0]["size"] * table.get("sectorsize", 512) == 32 * MiB


@pytest.mark.root
@not_root
@needs("losetup", "mkfs.ext4", "findmnt", "lsblk")
def test_mounted_ext4_is_captured_with_uuid_and_label(tmp_path, loopdev):
    plain = loopdev(tmp_path / "plain.img")  # no partition table: not listed as a disk
    dev = loopdev(tmp_path / "fs.img")
    fs_uuid = str(uuid.uuid4())
    sh("mkfs.ext4", "-q", "-L", "stwtest", "-U", fs_uuid, dev)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", dev, str(mnt))
    try:
        got = capture()
    finally:
        subprocess.run(["umount", str(mnt)], check=False, timeout=60)
    [fs] = [f for f in got["filesystems"] if f["target"] == str(mnt)]
    assert fs["source"] == dev and fs["fstype"] == "ext4"
    assert fs["uuid"] == fs_uuid and fs["label"] == "stwtest"
    assert any(d.get("path", "/dev/" + d["name"]) == dev for d in got["block_devices"])
    assert plain not in [d["name"] for d in got["disks"]]
    assert dev not in [d["name"] for d in got["disks"]]


LVM_ENV = {"DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
# No device-mapper in some kernels: only metadata operations, never activation.
LVM_CONFIG = ("global { activation = 0 } activation { udev_sync = 0 udev_rules = 0 } "
              "devices { obtain_device_list_from_udev = 0 }")


def lvm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([argv[0], "--config", LVM_CONFIG, *argv[1:]], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **LVM_ENV})


@pytest.mark.root
@not_root
@needs("losetup", "pvcreate", "vgcreate", "lvcreate")
def test_lvm_metadata_on_a_loop_device(tmp_path, loopdev):
    dev = loopdev(tmp_path / "pv.img", 64)
    vg = f"stwtest{uuid.uuid4().hex[:8]}"
    made = lvm("pvcreate", "-y", dev)
    if made.returncode != 0:
        pytest.skip(f"pvcreate does not work here: {made.stderr.strip()[-300:]}")
    try:
        res = lvm("vgcreate", vg, dev)
        assert res.returncode == 0, res.stderr
        lv = lvm("lvcreate", "-an", "-Zn", "-y", "-L", "8M", "-n", "lv1", vg)
        has_lv = lv.returncode == 0

        got = capture()["lvm"]
        json.dumps(got)
        [pv] = [p for p in got["pvs"] if p["pv_name"] == dev]
        assert pv["vg_name"] == vg and pv["pv_uuid"]
        assert isinstance(pv["pv_size"], int) and pv["pv_size"] > 0
        [vgrow] = [v for v in got["vgs"] if v["vg_name"] == vg]
        assert vgrow["vg_uuid"] and vgrow["vg_extent_size"] == 4 * MiB
        lvs = [row for row in got["lvs"] if row["vg_name"] == vg]
        if has_lv:
            [lvrow] = lvs
            assert lvrow["lv_name"] == "lv1" and lvrow["lv_size"] == 8 * MiB
            assert lvrow["lv_path"] == f"/dev/{vg}/lv1" and lvrow["lv_uuid"]
            assert vgrow["lv_count"] == 1
        else:
            assert lvs == []
        free = lvm_vg_free(None, vg)
        assert free == vgrow["vg_free"]
        assert free == vgrow["vg_size"] - (8 * MiB if has_lv else 0)
        assert free == vgrow["vg_free_count"] * vgrow["vg_extent_size"]
    finally:
        lvm("vgremove", "-f", vg)
        lvm("pvremove", "-ff", "-y", dev)
