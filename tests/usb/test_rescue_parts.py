"""The pieces of the rescue system and the restore planner that need no disk: the boot menu,
kernel parameters, efibootmgr parsing, partition scripts for equal/larger/smaller disks; and,
as root, a rescue tree that runs steward restore chrooted with nothing from the host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.errors import UsageError
from agent.system.commands import CommandRunner
from backup.store import Generation
from usbimage import rescue, rescueboot, rescuemenu
from usbimage.detect import Disk
from usbimage.restorefix import parse_efibootmgr
from usbimage.restoreplan import Target, _script, make_plan

MiB = 2**20
EFIBOOTMGR = """BootCurrent: 0004
BootOrder: 0004,0001,0000
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503)
Boot0001* UEFI QEMU HARDDISK QM00001 \tPciRoot(0x0)/Pci(0x1,0x1)/Ata(0,0,0)
Boot0004* AlmaLinux\tHD(1,GPT,3f1c2e4a-9b7d-4c1e-8f00-1a2b3c4d5e6f,0x800,0x12c000)\
/File(\\EFI\\almalinux\\shimx64.efi)
Boot0005* debian\tHD(2,GPT,0A1B2C3D-0000-4000-8000-000000000001,0x800,0x20000)\
/\\EFI\\debian\\grubx64.efi
"""


def test_efibootmgr_disk_entries_old_and_new_formats() -> None:
    got = parse_efibootmgr(EFIBOOTMGR)
    assert got == [
        {"num": "0004", "label": "AlmaLinux", "partuuid": "3f1c2e4a-9b7d-4c1e-8f00-1a2b3c4d5e6f",
         "part": "1", "loader": "\\EFI\\almalinux\\shimx64.efi"},
        {"num": "0005", "label": "debian", "partuuid": "0a1b2c3d-0000-4000-8000-000000000001",
         "part": "2", "loader": "\\EFI\\debian\\grubx64.efi"}]


def _gen(tmp_path: Path, gen_id: str, source: str, verified: bool = True) -> Generation:
    path = tmp_path / gen_id
    path.mkdir()
    manifest = {"format": 1, "id": gen_id, "host": "mail1", "source": source,
                "created": gen_id, "verified": {"at": gen_id} if verified else None,
                "filesystems": [], "segments": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return Generation(path)


def test_boot_menu_offers_every_whole_system_generation_newest_first(tmp_path: Path) -> None:
    _gen(tmp_path, "20261101T030000Z", "/")
    _gen(tmp_path, "20261108T030000Z", "/srv")
    _gen(tmp_path, "20261115T030000Z", "/", verified=False)
    store = rescueboot.Store(tmp_path)
    cfg = rescueboot.menu(rescueboot.whole_system(store))
    entries = [line for line in cfg.splitlines() if line.startswith("menuentry")]
    assert len(entries) == 3  # two generations of "/" and the shell; the /srv one is not
    assert "20261115T030000Z" in entries[0] and "NOT VERIFIED" in entries[0]
    assert "20261101T030000Z" in entries[1] and "verified" in entries[1]
    assert "rescue shell" in entries[2]
    assert "steward.restore=20261115T030000Z" in cfg and "rdinit=/steward/init" in cfg
    assert "console=ttyS0,115200" in cfg and "terminal_input serial console" in cfg


def test_kernel_parameters(tmp_path: Path) -> None:
    f = tmp_path / "cmdline"
    f.write_text("BOOT_IMAGE=/x rdinit=/steward/init steward.restore=20261101T030000Z "
                 "steward.shell quiet\n")
    assert rescuemenu.cmdline(str(f)) == {"restore": "20261101T030000Z", "shell": "1"}
    assert rescuemenu.cmdline(str(tmp_path / "none")) == {}


def _disk(path: str, size: int) -> Disk:
    return Disk(os.path.basename(path), path, size, False, False, "virtio", "", "", "")


def _saved(size: int = 1024 * MiB) -> dict[str, Any]:
    parts = [{"node": "/dev/vda1", "start": 2048, "size": 2048,
              "type": "21686148-6449-6E6F-744E-656564454649",
              "uuid": "AAAAAAAA-0000-4000-8000-000000000001"},
             {"node": "/dev/vda2", "start": 4096, "size": 2 * 1024 * 1024 - 6144,
              "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
              "uuid": "AAAAAAAA-0000-4000-8000-000000000002", "name": "root",
              "fs": {"TYPE": "ext4", "UUID": "1234"}}]
    return {"name": "/dev/vda", "size": size, "partition_table": {
        "label": "gpt", "id": "BBBBBBBB-0000-4000-8000-000000000000", "sectorsize": 512,
        "partitions": parts}}


def test_partition_script_same_disk_keeps_guids_and_sizes() -> None:
    t = Target(_saved(), _disk("/dev/vdb", 1024 * MiB), "")
    _script(t, 512, False, {})
    assert t.script.splitlines()[:3] == ["label: gpt",
                                         "label-id: BBBBBBBB-0000-4000-8000-000000000000",
                                         "unit: sectors"]
    assert "/dev/vdb2 : start=4096, size=2091008, type=0FC63DAF" in t.script
    assert 'uuid=AAAAAAAA-0000-4000-8000-000000000002, name="root"' in t.script
    assert t.parts == {"/dev/vda1": "/dev/vdb1", "/dev/vda2": "/dev/vdb2"} and not t.notes


def test_partition_script_grows_onto_larger_and_shrinks_when_data_fits() -> None:
    t = Target(_saved(), _disk("/dev/nvme0n1", 4096 * MiB), "")
    renames: dict[str, str] = {}
    _script(t, 512, True, renames)
    assert "/dev/nvme0n1p2 : start=4096, type=" in t.script  # no size: to the end
    assert "grown to the end" in t.notes[0]
    assert len(renames) == 3 and "aaaaaaaa-0000-4000-8000-000000000002" in renames
    small = _saved()
    small["min_last_sectors"] = 400 * MiB // 512
    t = Target(small, _disk("/dev/sdb", 512 * MiB), "")
    _script(t, 512, False, {})
    assert "shrunk to" in t.notes[0]
    small["min_last_sectors"] = 600 * MiB // 512
    with pytest.raises(UsageError, match="too small"):
        _script(Target(small, _disk("/dev/sdb", 512 * MiB), ""), 512, False, {})
    with pytest.raises(UsageError, match="4096-byte ones"):
        _script(Target(_saved(), _disk("/dev/sdb", 4096 * MiB), ""), 4096, False, {})


def test_plan_refuses_what_it_cannot_rebuild(tmp_path: Path) -> None:
    gen = _gen(tmp_path, "20261101T030000Z", "/")
    manifest = json.loads((gen.path / "manifest.json").read_text())
    manifest["filesystems"] = [{"prefix": "", "mountpoint": "/", "device": "/dev/md0",
                                "fstype": "ext4"}]
    (gen.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="does not say which disk held /dev/md0"):
        make_plan(gen, {"disks": [_saved()]}, [_disk("/dev/vdb", 2048 * MiB)], {})
    with pytest.raises(UsageError, match="no disk layout"):
        make_plan(gen, {"disks": {"error": "lsblk: not installed"}}, [], {})


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot)")
def test_rescue_tree_runs_steward_restore_with_nothing_from_the_host(tmp_path: Path) -> None:
    tree = tmp_path / "steward"
    tree.mkdir()
    rescue.build_tree(tree, CommandRunner(), lambda _: None)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    r = subprocess.run(["chroot", str(tree), "/usr/bin/steward", "restore", "--help"],
                       capture_output=True, text=True, timeout=120, env=env, check=False)
    assert r.returncode == 0 and "--map SAVED=DISK" in r.stdout, r.stderr
    for tool in (["sfdisk", "--version"], ["mkfs.ext4", "-V"], ["zstd", "-V"],
                 ["tar", "--version"], ["python3", "-c", "import usbimage.rescuemenu"]):
        r = subprocess.run(["chroot", str(tree), *tool], capture_output=True, text=True,
                           timeout=60, env={**env, "PYTHONPATH": "/opt/steward/lib"},
                           check=False)
        assert r.returncode == 0, (tool, r.stderr)
    assert os.access(tree / "init", os.X_OK)
    out = tmp_path / "extra.cpio.gz"
    rescue.cpio(tree, out, ["gzip", "-1", "-c"])
    raw = subprocess.run(["gzip", "-dc", str(out)], capture_output=True, timeout=120,
                         check=True).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True,
                             timeout=120, check=True).stdout.decode().split()
    assert "steward/init" in listing and "steward/usr/bin/steward-rescue" in listing


def test_rescue_system_is_rebuilt_when_the_kernel_or_steward_changes(tmp_path: Path) -> None:
    want = {"format": 1, "kernel": "5.14.0-427.el9.x86_64", "kernel_size": 1,
            "kernel_mtime": 100, "steward": "0.1.0", "python": "3.9.18"}
    assert rescue.stale(tmp_path, want) == "there is no rescue system on the drive yet"
    home = tmp_path / rescue.HOME
    home.mkdir(parents=True)
    (home / "rescue.json").write_text(json.dumps(want))
    assert rescue.stale(tmp_path, want) == "the rescue system on the drive is incomplete"
    (home / "vmlinuz").write_bytes(b"k")
    (home / "initrd.img").write_bytes(b"i")
    assert rescue.stale(tmp_path, want) is None
    newer = dict(want, kernel="5.14.0-503.el9.x86_64", kernel_mtime=200)
    assert rescue.stale(tmp_path, newer) == \
        "the kernel changed (5.14.0-427.el9.x86_64 -> 5.14.0-503.el9.x86_64)"
    assert "steward changed" in str(rescue.stale(tmp_path, dict(want, steward="0.2.0")))
