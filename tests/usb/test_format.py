"""``steward usb format`` and ``usb list`` on real loop devices (sparse files): the GPT layout
and filesystems it writes, and every refusal, with proof that a refused or aborted format
leaves the disk as it was."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.system.commands import CommandError, CommandRunner
from tests.conftest import REPO
from tests.usb.conftest import FakeTty, fingerprint, partition, root_loop, sh, usb
from usbimage.format import BIOS_BOOT, ESP, LINUX_DATA

pytestmark = root_loop


def gpt(dev: str) -> dict[str, Any]:
    table: dict[str, Any] = json.loads(sh("sfdisk", "--json", dev))["partitiontable"]
    return table


def probe(part: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", part, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def listed(dev: str) -> dict[str, Any]:
    r = usb("list", "--all", "--format", "json")
    assert r.code == 0, r.err
    disks = {d["path"]: d for d in json.loads(r.out)["disks"]}
    return disks[dev]


def test_format_writes_gpt_with_bios_efi_and_data_partitions_and_can_run_twice(loop_disk):
    dev = loop_disk(2048)
    r = usb("format", dev, "--force", "--yes")
    assert r.code == 0, r.err
    assert "warning: it is not a USB disk (transport: loop) (--force given)" in r.out
    assert f"{dev} is a steward drive now" in r.out
    table = gpt(dev)
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [(p["type"], p["name"]) for p in parts] == [
        (BIOS_BOOT, "steward-bios"), (ESP, "steward-efi"), (LINUX_DATA, "steward-data")]
    assert [p["start"] for p in parts[:2]] == [2048, 4096]  # 1 MiB aligned
    assert [p["size"] * 512 for p in parts[:2]] == [2**20, 256 * 2**20]
    assert parts[2]["start"] + parts[2]["size"] > table["lastlba"] - 2048  # the rest
    efi, data = probe(f"{dev}p2"), probe(f"{dev}p3")
    assert (efi["TYPE"], efi["LABEL"], efi["VERSION"]) == ("vfat", "STEWARD-EFI", "FAT32")
    assert (data["TYPE"], data["LABEL"]) == ("ext4", "STEWARD-DATA")
    assert "Reserved block count:     0" in sh("tune2fs", "-l", f"{dev}p3")

    disk = listed(dev)  # list --all shows the loop device, its transport and the labels
    assert disk["transport"] == "loop" and disk["steward"] and not disk["candidate"]
    assert [(p["fstype"], p["label"], p["partlabel"]) for p in disk["partitions"]] == [
        (None, None, "steward-bios"), ("vfat", "STEWARD-EFI", "steward-efi"),
        ("ext4", "STEWARD-DATA", "steward-data")]
    assert dev not in usb("list").out  # by default only USB disks

    again = usb("format", dev, "--force", "--yes")
    assert again.code == 0, again.err
    assert "This is a steward drive already" in again.out
    assert probe(f"{dev}p3")["UUID"] != data["UUID"]
    assert len(gpt(dev)["partitions"]) == 3


def test_a_disk_that_is_not_usb_is_refused_without_force_naming_its_transport(loop_disk):
    dev = loop_disk(2048)
    before = fingerprint(dev)
    r = usb("format", dev, "--yes")
    assert r.code == 2
    assert "it is not a USB disk (transport: loop); --force overrides" in r.err
    assert fingerprint(dev) == before


def test_a_mounted_partition_is_refused_even_with_force(loop_disk, tmp_path: Path):
    dev = loop_disk(2048)
    part = partition(dev)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", part, str(mnt))
    try:
        before = fingerprint(dev)
        r = usb("format", dev, "--force", "--yes")
        assert r.code == 2
        assert f"it is in use: {part} is mounted on {mnt}" in r.err
        assert "--force does not override this" in r.err
        assert fingerprint(dev) == before
    finally:
        sh("umount", str(mnt))


def test_a_partition_mounted_in_another_mount_namespace_is_refused_as_busy(loop_disk,
                                                                          tmp_path: Path):
    """Not in our /proc/self/mountinfo, yet the kernel refuses the exclusive open."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    dev = loop_disk(2048)
    part = partition(dev)
    mnt = tmp_path / "elsewhere"
    mnt.mkdir()
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f'mount "{part}" "{mnt}" && echo mounted && exec sleep 120'],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "mounted\n"
        assert not os.path.ismount(mnt)
        before = fingerprint(dev)
        r = usb("format", dev, "--force", "--yes")
        assert r.code == 2
        assert f"the kernel reports {dev} busy" in r.err
        assert fingerprint(dev) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_disk_holding_the_running_system_is_refused_unless_forced(loop_disk):
    """Made to hold the system by a mountinfo text that mounts its partition on / (given to
    the system check only: whether the disk is in use is always read from /proc)."""
    dev = loop_disk(2048)
    part = partition(dev)
    with open(f"/sys/class/block/{os.path.basename(part)}/dev") as f:
        devno = f.read().strip()
    fake = f"1 0 {devno} / / rw,relatime shared:1 - ext4 {part} rw\n"
    before = fingerprint(dev)
    r = usb("format", dev, "--yes", system_mountinfo=fake)
    assert r.code == 2
    assert "it holds the running system (/, /boot, /usr, /var, /home or an active swap lives " \
           "on it); --force overrides" in r.err
    assert "it is not a USB disk (transport: loop)" in r.err  # every reason is listed
    assert fingerprint(dev) == before
    r = usb("format", dev, "--force", "--yes", system_mountinfo=fake)
    assert r.code == 0, r.err
    assert "warning: it holds the running system" in r.out


def test_a_wrong_answer_at_the_prompt_aborts_and_writes_nothing(loop_disk):
    dev = loop_disk(2048)
    partition(dev)
    before = fingerprint(dev)
    r = usb("format", dev, "--force", stdin=FakeTty("sda\n"))
    assert r.code == 1
    assert "Everything on these partitions will be destroyed:" in r.out
    assert f"Type the device name ({os.path.basename(dev)})" in r.out
    assert f"aborted: nothing was written to {dev}" in r.out
    assert fingerprint(dev) == before


def test_the_device_name_typed_at_the_prompt_formats(loop_disk):
    dev = loop_disk(2048)
    r = usb("format", dev, "--force", stdin=FakeTty(f"{os.path.basename(dev)}\n"))
    assert r.code == 0, r.err
    assert probe(f"{dev}p3")["LABEL"] == "STEWARD-DATA"


def test_without_a_terminal_and_without_yes_it_refuses(loop_disk):
    dev = loop_disk(2048)
    partition(dev)
    before = fingerprint(dev)
    r = usb("format", dev, "--force", stdin=io.StringIO(f"{dev}\n"))
    assert r.code == 2
    assert "standard input is not a terminal; pass --yes" in r.err
    assert "Everything on these partitions will be destroyed:" in r.out  # shown first
    assert fingerprint(dev) == before


WRAPPER = """
import sys
from tests.usb.conftest import parser
from usbimage import cli
from agent.errors import UsageError
try:
    code = cli.run(parser().parse_args(sys.argv[1:]))
except UsageError as e:
    print(f"steward: {e}", file=sys.stderr)
    code = 2
sys.exit(code)
"""


def test_the_command_line_with_a_pipe_for_stdin_refuses_without_yes(loop_disk):
    dev = loop_disk(2048)
    before = fingerprint(dev)
    done = subprocess.run([sys.executable, "-c", WRAPPER, "usb", "format", dev, "--force"],
                          input=f"{os.path.basename(dev)}\n", capture_output=True, text=True,
                          timeout=60, cwd=REPO, check=False)
    assert done.returncode == 2, done.stderr
    assert "standard input is not a terminal" in done.stderr
    assert fingerprint(dev) == before


def test_a_disk_under_1_gib_is_refused(loop_disk):
    dev = loop_disk(100)
    r = usb("format", dev, "--force", "--yes")
    assert r.code == 2
    assert "it is too small (100.0 MiB); a steward drive needs at least 1.0 GiB" in r.err


def test_a_partition_is_refused_and_the_whole_disk_named(loop_disk):
    dev = loop_disk(2048)
    part = partition(dev)
    before = fingerprint(dev)
    r = usb("format", part, "--force", "--yes")
    assert r.code == 2
    assert f"refusing to format {part}: it is a partition" in r.err
    assert f"give {dev}" in r.err
    assert fingerprint(dev) == before


class FailingMkfs(CommandRunner):
    def run(self, argv, **kw):  # type: ignore[no-untyped-def]
        if os.path.basename(argv[0]) == "mkfs.ext4":
            raise CommandError(argv, 1, "mkfs.ext4: disk on fire")
        return super().run(argv, **kw)


def test_a_failing_step_is_named_and_the_disk_is_no_steward_drive_afterwards(loop_disk):
    dev = loop_disk(2048)
    assert usb("format", dev, "--force", "--yes").code == 0
    r = usb("format", dev, "--force", "--yes", env=SimpleNamespace(commands=FailingMkfs()))
    assert r.code == 1
    assert f"could not make the ext4 filesystem on {dev}p3" in r.err
    assert "disk on fire" in r.err
    assert f"format it again (steward usb format {dev})" in r.err
    assert not listed(dev)["steward"]  # the old STEWARD-DATA label was wiped first


@pytest.mark.parametrize("missing", ["/no/such/disk", "/dev/null"])
def test_what_is_not_a_block_device_is_refused(missing):
    r = usb("format", missing, "--yes")
    assert r.code == 2
    assert missing in r.err
