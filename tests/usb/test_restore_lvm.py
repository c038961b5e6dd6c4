"""LVM in a restore: the plan, the device-mapper names it must not clash with, and the LVM step
itself with the real lvm on loop devices — beside a volume group of the same name on another
disk, as when the old disk is still attached. This kernel has no device-mapper, so LVM runs
with activation off here; the logical volumes, their nodes and a restored system finding its
PVs through the devices file are proven under qemu (tests/vm/test_rescue_e2e.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.system.commands import CommandRunner
from backup.store import Generation
from usbimage import restoredisk
from usbimage.detect import Disk
from usbimage.restorecli import active_vgs, text
from usbimage.restoreplan import Lvm, Plan, make_plan

MiB = 2**20
PV_UUID = "qtObJ7-Q4zO-XsOM-VAwm-igzX-ddMy-glzEDL"
LVM_UUID = re.compile(r"^[0-9A-Za-z]{6}(-[0-9A-Za-z]{4}){5}-[0-9A-Za-z]{6}$")
ROOT_SIZE = 700 * MiB


def _generation(tmp_path: Path) -> Generation:
    path = tmp_path / "20261101T030000Z"
    path.mkdir()
    manifest = {"format": 1, "id": path.name, "host": "mail1", "source": "/",
                "created": path.name, "verified": {"at": path.name},
                "filesystems": [{"prefix": "", "mountpoint": "/", "fstype": "ext4",
                                 "device": "/dev/mapper/vg--mail-root"}],
                "segments": []}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return Generation(path)


def _layout() -> dict[str, Any]:
    """EL9's shape: a partition holding one PV of a VG whose name has a hyphen."""
    parts = [{"node": "/dev/vda1", "start": 2048, "size": 2 * 1024 * 1024 - 2048 - 33,
              "type": "E6D6D379-F507-44C2-A23C-238F2A3DF928",
              "uuid": "AAAAAAAA-0000-4000-8000-000000000001",
              "fs": {"TYPE": "LVM2_member", "UUID": PV_UUID}}]
    lv = {"lv_name": "root", "vg_name": "vg-mail", "lv_path": "/dev/vg-mail/root",
          "lv_size": ROOT_SIZE, "lv_layout": "linear", "origin": "",
          "fs": {"TYPE": "ext4", "UUID": "0c8a4f9e-5a1b-4b7e-9f1e-3d1c2b0a9e11"}}
    return {"disks": [{"name": "/dev/vda", "size": 1024 * MiB, "partition_table": {
        "label": "gpt", "id": "BBBBBBBB-0000-4000-8000-000000000000", "sectorsize": 512,
        "partitions": parts}}],
        "lvm": {"pvs": [{"pv_name": "/dev/vda1", "vg_name": "vg-mail", "pv_uuid": PV_UUID}],
                "vgs": [{"vg_name": "vg-mail", "vg_extent_size": 4 * MiB}],
                "lvs": [lv]}}


def _disk(path: str) -> Disk:
    return Disk(os.path.basename(path), path, 2048 * MiB, False, False, "virtio", "", "", "")


def test_plan_recreates_the_volume_group_and_renews_a_pv_uuid_in_use(tmp_path: Path) -> None:
    gen = _generation(tmp_path)
    plan = make_plan(gen, _layout(), [_disk("/dev/vdb")], {"/dev/vda": "/dev/vdb"},
                     sysfs_root=str(tmp_path))
    assert plan.lvm.pvs == [("/dev/vdb1", PV_UUID, "vg-mail")]
    assert plan.lvm.vgs == [("vg-mail", 4 * MiB)]
    assert plan.lvm.lvs == [("vg-mail", "root", ROOT_SIZE)]
    [root] = plan.filesystems
    assert (root.device, root.mountpoint, root.prefix) == ("/dev/vg-mail/root", "/", "")
    assert not plan.renames  # the saved UUIDs are free here: kept

    old_disk_attached = {PV_UUID.lower()}
    plan = make_plan(gen, _layout(), [_disk("/dev/vdb")], {"/dev/vda": "/dev/vdb"},
                     in_use=old_disk_attached, sysfs_root=str(tmp_path))
    new = plan.renames[PV_UUID.lower()]
    assert LVM_UUID.match(new) and new != PV_UUID
    assert f"/dev/vdb1: LVM physical volume {PV_UUID} -> NEW {new} of vg-mail" in text(plan)
    assert "some saved UUIDs are in use" in plan.notes[0]


def test_active_volume_groups_from_device_mapper_names(tmp_path: Path) -> None:
    for n, name in enumerate(("rl-root", "rl-swap", "vg--mail-root", "luks-0c8a4f9e", "a-b--c")):
        d = tmp_path / f"block/dm-{n}/dm"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
    got = active_vgs(str(tmp_path))
    # "luks-0c8a4f9e" is not LVM's, but has LVM's shape; it only refuses a VG named "luks"
    assert got == {"rl": ["rl-root", "rl-swap"], "vg-mail": ["vg--mail-root"],
                   "luks": ["luks-0c8a4f9e"], "a": ["a-b--c"]}
    assert active_vgs(str(tmp_path / "none")) == {}


def _lvm(*argv: str) -> subprocess.CompletedProcess[str]:
    cfg = ("global { activation = 0 } devices { obtain_device_list_from_udev = 0 "
           "use_devicesfile = 0 }")
    return subprocess.run(["lvm", argv[0], "--config", cfg, *argv[1:]], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "DM_DISABLE_UDEV": "1"})


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices)")
def test_lvm_step_beside_a_volume_group_of_the_same_name(
        tmp_path: Path, loop_disk: Callable[[int], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = loop_disk(64), loop_disk(64)
    made = _lvm("pvcreate", "-y", "--uuid", PV_UUID, "--norestorefile", old)
    if made.returncode:
        pytest.skip(f"pvcreate does not work here: {made.stderr.strip()[-300:]}")
    try:
        assert _lvm("vgcreate", "vg-mail", old).returncode == 0
        plan = Plan(_generation(tmp_path), {}, {}, [], [],
                    Lvm(pvs=[(new, PV_UUID, "vg-mail")], vgs=[("vg-mail", 4 * MiB)]), "bios")
        plan.renames[PV_UUID.lower()] = renewed = "H7zWZz-Lbry-1Jeu-JHHt-qsX0-ab12-CD34ef"
        # no device-mapper in this kernel: metadata only (the LVM step adds no LVs here)
        monkeypatch.setattr(restoredisk, "LVM_CONFIG",
                            "global {{ activation = 0 }} " + restoredisk.LVM_CONFIG)
        said: list[str] = []
        run = restoredisk.Runner(CommandRunner(), said.append)
        restoredisk.lvm(plan, run)
        restoredisk.deactivate(plan, run)
        assert said == [f"make the LVM physical volume {new}", "make the volume group vg-mail"]
        rows = _lvm("pvs", "--reportformat", "json", "-o", "pv_name,pv_uuid,vg_name")
        pvs = {r["pv_name"]: r for r in json.loads(rows.stdout)["report"][0]["pv"]}
        assert pvs[new]["pv_uuid"] == renewed and pvs[new]["vg_name"] == "vg-mail"
        assert pvs[old]["pv_uuid"] == PV_UUID  # the old disk is untouched
        assert "VG name vg-mail is used by VGs" in rows.stderr  # two now, as planned
    finally:
        for dev in (new, old):
            _lvm("pvremove", "-ff", "-y", dev)
