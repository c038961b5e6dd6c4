"""Disk checks against real filesystems on loop devices, filled past their thresholds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.config import Config
from agent.env import Env
from agent.model import Status
from agent.ranges import Range
from checks.resources import DiskCheck, DiskOptions, local_mounts

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def loopfs(tmp_path):
    """Make a filesystem of the given kind on a fresh loop device and mount it."""
    made: list[tuple[str, Path]] = []

    def make(kind: str = "ext4", size_mb: int = 64, *mkfs_args: str) -> Path:
        img, mnt = tmp_path / f"{kind}{len(made)}.img", tmp_path / f"mnt{len(made)}"
        sh("truncate", "-s", f"{size_mb}M", str(img))
        dev = sh("losetup", "--find", "--show", str(img)).strip()
        mnt.mkdir()
        try:
            sh(f"mkfs.{kind}", *mkfs_args, dev)
            sh("mount", dev, str(mnt))
        except subprocess.CalledProcessError:
            sh("losetup", "-d", dev)
            raise
        made.append((dev, mnt))
        return mnt

    yield make
    for dev, mnt in reversed(made):
        subprocess.run(["umount", str(mnt)], check=False, timeout=60)
        subprocess.run(["losetup", "-d", dev], check=False, timeout=60)


def judge(mnt: Path, **kw) -> object:
    opts = DiskOptions(mounts=(str(mnt),), **kw)
    [check] = DiskCheck.instances(opts, Env(Config("<test>")))
    [result] = check.run(Env(Config("<test>")))
    return result


def fill_to(mnt: Path, percent: float) -> None:
    st = os.statvfs(mnt)
    used = (st.f_blocks - st.f_bfree)
    target = percent / 100 * (used + st.f_bavail)
    need = int((target - used) * st.f_frsize)
    if need > 0:
        sh("fallocate", "-l", str(need), str(mnt / f"fill{percent}"))


def test_disk_filled_past_warning_then_critical(loopfs):
    mnt = loopfs("ext4", 64, "-q", "-m", "5")
    r = judge(mnt, warn=Range.parse("50"), crit=Range.parse("80"))
    assert r.status is Status.OK
    assert r.check == f"disk:{mnt}"
    fill_to(mnt, 62)
    r = judge(mnt, warn=Range.parse("50"), crit=Range.parse("80"))
    assert r.status is Status.WARN, r.summary
    assert "du -xh" in r.remedy
    fill_to(mnt, 90)
    r = judge(mnt, warn=Range.parse("50"), crit=Range.parse("80"))
    assert r.status is Status.CRIT, r.summary
    used = {m.name: m for m in r.metrics}["used"]
    assert 80 < used.value <= 100 and used.warn == "50" and used.crit == "80"
    df = sh("df", "--output=pcent", str(mnt)).split()[-1].rstrip("%")
    assert abs(float(df) - used.value) <= 1, "the same used percentage df reports"


def test_inodes_exhausted_is_critical_even_with_space_free(loopfs):
    mnt = loopfs("ext4", 32, "-q", "-N", "64")
    for i in range(70):
        try:
            (mnt / f"f{i}").touch()
        except OSError:
            break
    r = judge(mnt)
    assert r.status is Status.CRIT, r.summary
    metrics = {m.name: m.value for m in r.metrics}
    assert metrics["inodes_used"] >= 95 and metrics["used"] < 85
    assert "small files" in r.remedy


def test_btrfs_has_no_inode_figures(loopfs):
    mnt = loopfs("btrfs", 128, "-q")
    r = judge(mnt)
    assert r.status is Status.OK
    assert {m.name for m in r.metrics} == {"used", "free"}


def test_default_config_discovers_a_new_local_filesystem(loopfs, steward):
    mnt = loopfs("ext4", 32, "-q")
    assert str(mnt) in local_mounts()
    fill_to(mnt, 97)
    proc = steward("check", "--format", "json", "--only", f"disk:{mnt}")
    doc = json.loads(proc.stdout)
    assert [(r["check"], r["status"]) for r in doc["results"]] == [(f"disk:{mnt}", "CRIT")]
    assert proc.returncode == 2
