"""LVM snapshots for consistent reads: ``decide`` against real LVM metadata on loop devices
and ``taken``'s pass-through and fallback paths. This kernel may lack device-mapper: volumes
are created without activation, so no snapshot can be taken or mounted here."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.system.commands import CommandError, CommandRunner, Completed
from backup.layout import which
from backup.mounts import Filesystem, Mount
from backup.options import BackupOptions
from backup.snapshot import Decision, decide, taken

MiB = 1 << 20
LVM_ENV = {"DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
LVM_CONFIG = ("global { activation = 0 } activation { udev_sync = 0 udev_rules = 0 } "
              "devices { obtain_device_list_from_udev = 0 }")
TOOLS = ("losetup", "pvcreate", "vgcreate", "lvcreate", "lvs", "vgremove", "pvremove")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(any(which(t) is None for t in TOOLS), reason="needs lvm2 and losetup"),
]


def lvm(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([argv[0], "--config", LVM_CONFIG, *argv[1:]], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **LVM_ENV})
    if check and done.returncode:
        raise AssertionError(f"{argv}: {done.stderr.strip()}")
    return done


def runner() -> CommandRunner:
    return CommandRunner(env={**os.environ, **LVM_ENV})


def lv_names(vg: str) -> list[str]:
    out = lvm("lvs", "--reportformat", "json", "-o", "lv_name", vg).stdout
    return [r["lv_name"] for rep in json.loads(out)["report"] for r in rep["lv"]]


@pytest.fixture
def make_vg(tmp_path: Path) -> Iterator[Any]:
    """``make_vg(size_mb, *lvs_mb)``: a volume group on a loop device with inactive logical
    volumes lv-0, lv-1, ... of the sizes given; its name. Removed with its PV and loop."""
    made: list[tuple[str, str]] = []

    def make(size_mb: int, *lvs_mb: int) -> str:
        img = tmp_path / f"pv{len(made)}.img"
        with open(img, "wb") as f:
            f.truncate(size_mb * MiB)
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
        vg = f"stw-test-{uuid.uuid4().hex[:8]}"
        made.append((vg, dev))
        pv = lvm("pvcreate", "-y", dev, check=False)
        if pv.returncode:
            pytest.skip(f"pvcreate does not work here: {pv.stderr.strip()[-300:]}")
        lvm("vgcreate", "-s", "4M", vg, dev)
        for i, mb in enumerate(lvs_mb):
            lvm("lvcreate", "-an", "-Zn", "-y", "-L", f"{mb}M", "-n", f"lv-{i}", vg)
        return vg

    yield make
    for vg, dev in reversed(made):
        lvm("vgremove", "-f", vg, check=False)
        lvm("pvremove", "-ff", "-y", dev, check=False)
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60, check=False)


def on(source: str, target: str = "/srv", fstype: str = "ext4", read_root: str = "",
       prefix: str = "srv") -> Filesystem:
    return Filesystem(prefix, read_root or target, Mount(target, source, fstype, "/", "rw"))


def dm(vg: str, lv: str) -> str:
    return f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def opts(pct: int, on: bool = True) -> BackupOptions:
    return BackupOptions(snapshot=on, snapshot_size=pct)


def test_room_in_the_volume_group_rounds_the_size_up_to_whole_extents(make_vg):
    vg = make_vg(64, 20)  # 15 extents of 4 MiB, 5 used
    for source in (dm(vg, "lv-0"), f"/dev/{vg}/lv-0"):
        [d] = decide([on(source)], opts(30), runner(), lvm_config=LVM_CONFIG)
        assert d.ok and d.reason == "" and d.stale is None
        assert d.lv == f"{vg}/lv-0"
        assert d.size == 8 * MiB  # 30 % of 20 MiB is 6 MiB: two extents
    [d] = decide([on(dm(vg, "lv-0"))], opts(1), runner(), lvm_config=LVM_CONFIG)
    assert d.ok and d.size == 4 * MiB  # at least one extent


def test_no_room_reads_live_and_says_why(make_vg):
    vg = make_vg(16, 4, 4)  # 3 extents of 4 MiB: 4 MiB left
    [d] = decide([on(dm(vg, "lv-0"))], opts(100), runner(), lvm_config=LVM_CONFIG)
    assert d.ok and d.size == 4 * MiB  # fits exactly
    [d] = decide([on(dm(vg, "lv-0"))], opts(110), runner(), lvm_config=LVM_CONFIG)
    assert not d.ok and d.size == 8 * MiB
    assert d.reason == (f"volume group {vg} has 4.0 MiB free; a 110 % snapshot of {vg}/lv-0 "
                        "needs 8.0 MiB: read live")
    # Two volumes of one group share its free space: the second one does not fit any more.
    a, b = decide([on(dm(vg, "lv-0")), on(dm(vg, "lv-1"), "/srv/b", prefix="srv/b")],
                  opts(100), runner(), lvm_config=LVM_CONFIG)
    assert a.ok and not b.ok
    assert b.reason == (f"volume group {vg} has 0 B free; a 100 % snapshot of {vg}/lv-1 "
                        "needs 4.0 MiB: read live")


def test_filesystems_not_on_lvm_and_btrfs_are_read_live(make_vg):
    vg = make_vg(64, 8)
    plain, btrfs = decide([on("/dev/loop99"), on(dm(vg, "lv-0"), fstype="btrfs")],
                          opts(10), runner(), lvm_config=LVM_CONFIG)
    assert plain == Decision(plain.fs, None, 0, False, "not on LVM: read live")
    assert not btrfs.ok and btrfs.lv == f"{vg}/lv-0" and btrfs.reason.endswith(": read live")


def test_lvm_that_cannot_be_queried_reads_live():
    [d] = decide([on("/dev/sda1")], opts(10), runner(), lvm_config="not { valid")
    assert not d.ok and d.reason.startswith("LVM could not be queried (")


class NoCommands(CommandRunner):
    def run(self, argv: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"ran {argv}")


def test_snapshot_off_passes_the_filesystems_through():
    fss = (on("/dev/mapper/vg-root", "/", prefix=""), on("/dev/sdb1"))
    said: list[str] = []
    with taken(fss, opts(10, on=False), said.append, NoCommands()) as got:
        assert got == list(fss)
    assert said == []


def test_nothing_on_lvm_is_read_live_with_a_message():
    fs = on("/dev/loop99", "/srv/data")
    said: list[str] = []
    with taken([fs], opts(10), said.append, runner(), lvm_config=LVM_CONFIG) as got:
        assert got == [fs]
    assert said == ["/srv/data: not on LVM: read live"]


def test_a_failing_lvcreate_reads_live_and_leaves_no_volume(make_vg):
    """Without device-mapper lvcreate --snapshot fails: that filesystem is read live."""
    vg = make_vg(64, 8)
    fs = on(dm(vg, "lv-0"), "/srv/data", read_root="/srv/data/sub")
    said: list[str] = []
    with taken([fs], opts(50), said.append, runner(), lvm_config=LVM_CONFIG) as got:
        assert got == [fs]
    [line] = said
    assert line.startswith(f"/srv/data: no snapshot of {vg}/lv-0 (")
    assert "lvcreate" in line and line.endswith(": read live")
    assert lv_names(vg) == ["lv-0"]


class Scripted(CommandRunner):
    """Records the commands; answers ``lvs`` with ``rows`` and fails the programs in ``fail``."""

    def __init__(self, rows: list[dict[str, str]], fail: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.rows, self.fail = rows, fail
        self.ran: list[list[str]] = []

    def run(self, argv: Any, **kwargs: Any) -> Any:
        assert kwargs.get("timeout")
        cmd = [os.path.basename(argv[0]), *argv[1:]]
        self.ran.append(cmd)
        if cmd[0] in self.fail:
            raise CommandError(cmd, 5, "scripted failure")
        out = json.dumps({"report": [{"lv": self.rows}]}) if cmd[0] == "lvs" else ""
        return Completed(tuple(argv), 0, out, "")


def row(lv: str, attr: str = "-wi-ao----", origin: str = "") -> dict[str, str]:
    return {"lv_path": f"/dev/vg0/{lv}", "lv_dm_path": dm("vg0", lv), "vg_name": "vg0",
            "lv_name": lv, "lv_size": str(100 * MiB), "vg_free": str(64 * MiB),
            "vg_extent_size": str(4 * MiB), "lv_attr": attr, "origin": origin}


def test_the_commands_of_a_snapshot_and_its_removal():
    """With device-mapper the sequence is: freeze, lvcreate, unfreeze, mount, (read), umount,
    lvremove; a subdirectory source is read at the same place in the snapshot."""
    run = Scripted([row("data")])
    fs = on(dm("vg0", "data"), "/srv/data", "xfs", read_root="/srv/data/sub/dir")
    said: list[str] = []
    o = BackupOptions(snapshot=True, snapshot_size=10, fsfreeze=True)
    with taken([fs], o, said.append, run) as got:
        [snap] = got
        where = os.path.dirname(os.path.dirname(snap.read_root))
        assert snap.read_root == os.path.join(where, "sub/dir")
        assert (snap.prefix, snap.mount) == (fs.prefix, fs.mount)
        assert os.path.isdir(where)
    assert not os.path.exists(where)
    assert [c[0] for c in run.ran] == ["lvs", "fsfreeze", "lvcreate", "fsfreeze", "mount",
                                       "umount", "lvremove"]
    assert run.ran[1] == ["fsfreeze", "--freeze", "/srv/data"]
    assert run.ran[2][-6:] == ["--snapshot", "--name", "steward-snap-data", "--size",
                               f"{12 * MiB}b", "vg0/data"]
    assert "--config" in run.ran[2]  # no metadata backups written while frozen
    assert run.ran[3] == ["fsfreeze", "--unfreeze", "/srv/data"]
    assert run.ran[4] == ["mount", "-t", "xfs", "-o", "ro,nodev,nosuid,noexec,nouuid",
                          dm("vg0", "steward-snap-data"), where]
    assert run.ran[6] == ["lvremove", "-f", "vg0/steward-snap-data"]
    assert said == ["/srv/data: reading a 12.0 MiB snapshot of vg0/data"]


def test_an_error_while_reading_still_removes_the_snapshot():
    run = Scripted([row("data")])
    fs = on(dm("vg0", "data"), "/srv/data")
    with pytest.raises(KeyboardInterrupt), taken([fs], opts(10), lambda _: None, run):
        raise KeyboardInterrupt
    assert [c[0] for c in run.ran] == ["lvs", "lvcreate", "mount", "umount", "lvremove"]
    assert "noload" in run.ran[2][4]


def test_unfreeze_follows_a_failing_lvcreate():
    run = Scripted([row("data")], fail=("lvcreate",))
    fs = on(dm("vg0", "data"), "/srv/data")
    said: list[str] = []
    o = BackupOptions(snapshot=True, snapshot_size=10, fsfreeze=True)
    with taken([fs], o, said.append, run) as got:
        assert got == [fs]
    assert [c[:2] for c in run.ran] == [["lvs", "--reportformat"], ["fsfreeze", "--freeze"],
                                        ["lvcreate", "--config"], ["fsfreeze", "--unfreeze"]]
    [line] = said
    assert line.startswith("/srv/data: no snapshot of vg0/data (") and "scripted" in line


def test_a_stale_snapshot_is_removed_first_and_a_snapshot_lv_is_read_live():
    run = Scripted([row("data"), row("steward-snap-data", "swi-a-s---", "data"),
                    row("old", "swi-a-s---", "data")])
    data, old = on(dm("vg0", "data"), "/srv/data"), on(dm("vg0", "old"), "/srv/old")
    said: list[str] = []
    with taken([data, old], opts(10), said.append, run) as got:
        assert got[1] == old and got[0] != data
    assert [c[0] for c in run.ran] == ["lvs", "lvremove", "lvs", "lvcreate", "mount",
                                       "umount", "lvremove"]
    assert run.ran[1] == ["lvremove", "-f", "vg0/steward-snap-data"]
    assert said == ["removed snapshot vg0/steward-snap-data, left by an interrupted backup",
                    "/srv/data: reading a 12.0 MiB snapshot of vg0/data",
                    "/srv/old: vg0/old is itself a snapshot: read live"]
