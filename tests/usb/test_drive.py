"""``steward backup create --usb`` end to end on formatted loop disks: the drive is found by its
label, mounted, written to and unmounted; none or several is exit 2; --device picks one; the
report is mailed; a drive mounted already is used in place. Plus [usb] validation and the
mountinfo reading, which need no disk."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config.schema import ConfigError, build
from tests.conftest import run_steward
from tests.mailserver import MailServer
from tests.schemas import validate
from tests.usb.conftest import root_loop, sh, usb
from usbimage.drive import NO_DRIVE, mounted_at
from usbimage.options import UsbOptions

HOST = os.uname().nodename


# -- helpers shared with test_monitor ---------------------------------------------------------

def make_drive(loop_disk: Callable[[int], str], size_mib: int = 2048) -> tuple[str, str]:
    """A loop disk formatted by ``steward usb format``: (disk, data partition)."""
    dev = loop_disk(size_mib)
    r = usb("format", dev, "--force", "--yes")
    assert r.code == 0, r.err
    return dev, sh("lsblk", "-nro", "PATH", dev).split()[3]


def uuid(part: str) -> str:
    return sh("blkid", "-p", "-s", "UUID", "-o", "value", part).strip()


def source_tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    if src.exists():
        return src
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "data.bin").write_bytes(os.urandom(256 * 1024))
    return src


def config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "steward.toml"
    path.write_text(f'[usb]\nmount_dir = "{tmp_path}/mnt"\n{extra}')
    os.chmod(path, 0o644)
    return path


def backup_usb(tmp_path: Path, *args: str, extra: str = "") -> subprocess.CompletedProcess[str]:
    return run_steward("backup", "create", "--usb", "--source", str(source_tree(tmp_path)),
                       "--config", str(config(tmp_path, extra)),
                       "--state-dir", str(tmp_path / "state"), *args, timeout=300)


def generations(part: str, tmp_path: Path) -> list[dict[str, object]]:
    """The generations on the drive, read with ``steward backup list`` while the test has it
    mounted (read-only)."""
    mnt = tmp_path / f"check-{os.path.basename(part)}"
    mnt.mkdir(exist_ok=True)
    sh("mount", "-o", "ro", part, str(mnt))
    try:
        if not (mnt / "generations").is_dir():
            return []
        r = run_steward("backup", "list", "--target", str(mnt / "generations"),
                        "--format", "json")
        assert r.returncode == 0, r.stderr
        gens: list[dict[str, object]] = json.loads(r.stdout)["generations"]
        return gens
    finally:
        sh("umount", str(mnt))


def last_report(tmp_path: Path) -> dict[str, Any]:
    r = run_steward("backup", "last", "--format", "json", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, "backup-last.schema.json")
    assert doc["progress"] is None
    return dict(doc["report"])


def email_conf(port: int) -> str:
    return (f'[notify.email]\nto = [{{ address = "admin@example.com", min_severity = "CRIT" '
            f'}}]\nfrom = "steward@mail1.test"\nrelays = ["smtp://127.0.0.1:{port}"]\n'
            "timeout = 5\n")


# -- on loop disks ---------------------------------------------------------------------------

class TestOnLoopDisks:
    pytestmark = root_loop

    def test_a_generation_is_committed_on_the_drive_which_is_unmounted_after(
            self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        r = backup_usb(tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"to the steward drive {part} (" in r.stdout
        assert "read back and verified" in r.stdout
        assert "The drive is unmounted: it can be unplugged." in r.stdout
        assert "report not mailed: no [notify.email] recipients configured" in r.stdout
        assert mounted_at(part) is None
        # the mount point is gone too; its lock file stays (mount_dir is on /run, a tmpfs)
        assert [p.name for p in (tmp_path / "mnt").iterdir()] == [f".{uuid(part)}.lock"]
        [gen] = generations(part, tmp_path)
        assert gen["verified"] is True and gen["source"] == str(tmp_path / "src")
        # The report the Cockpit page reads (steward backup last), in its schema.
        rep = last_report(tmp_path)
        assert rep["kind"] == "usb" and rep["ok"] and rep["drive"] == part
        assert rep["generation"] == gen["id"] and rep["verified"] and rep["errors"] == []
        assert rep["text"] in r.stdout and "The drive is unmounted" in rep["text"]

    def test_a_second_backup_to_the_drive_reuses_the_archives_of_the_first(
            self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        assert backup_usb(tmp_path).returncode == 0
        r = backup_usb(tmp_path)  # the same tree again
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(generations(part, tmp_path)) == 2
        [(n, m)] = re.findall(r"(\d+) of (\d+) archives reused", r.stdout)
        assert n == m != "0", r.stdout

    def test_no_steward_drive_is_exit_2_saying_what_to_do(self, loop_disk, tmp_path):
        loop_disk(64)  # a disk, but not a steward drive
        r = backup_usb(tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"steward: {NO_DRIVE}" in r.stderr
        rep = last_report(tmp_path)
        assert rep["ok"] is False and rep["exit_code"] == 2 and rep["errors"] == [NO_DRIVE]

    def test_two_drives_are_exit_2_naming_both_and_device_picks_one(self, loop_disk, tmp_path):
        disk1, part1 = make_drive(loop_disk)
        disk2, part2 = make_drive(loop_disk)
        r = backup_usb(tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "several steward drives attached: " in r.stderr
        assert f"{part1} (" in r.stderr and f"{part2} (" in r.stderr
        assert "pick one with --device DEV" in r.stderr
        r = backup_usb(tmp_path, "--device", disk2)  # the disk names its data partition
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(generations(part2, tmp_path)) == 1
        assert generations(part1, tmp_path) == []
        r = backup_usb(tmp_path, "--device", part1)
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(generations(part1, tmp_path)) == 1
        r = backup_usb(tmp_path, "--device", sh("lsblk", "-nro", "PATH", disk1).split()[2])
        assert r.returncode == 2 and "is not a steward drive" in r.stderr

    def test_the_report_is_mailed_with_the_stdout_text(self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        with MailServer(tmp_path) as srv:
            r = backup_usb(tmp_path, extra=email_conf(srv.port))
            assert r.returncode == 0, r.stdout + r.stderr
            [msg] = srv.messages()
        [gen] = generations(part, tmp_path)
        assert msg["Subject"].startswith(f"[steward] {HOST}: backup to USB done: {gen['id']}, ")
        assert msg["Subject"].endswith(", 0 archives reused")
        assert msg["X-Steward-Kind"] == "backup" and msg["To"] == "admin@example.com"
        text = msg.get_body(("plain",)).get_content()
        assert text in r.stdout and "The drive is unmounted" in text
        assert f"report mailed to admin@example.com via smtp://127.0.0.1:{srv.port}" in r.stdout
        assert not list((tmp_path / "state/outbox").glob("*.eml"))

    def test_a_failed_backup_is_mailed_as_failed_and_the_drive_is_unmounted_anyway(
            self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        with MailServer(tmp_path) as srv:
            r = backup_usb(tmp_path, extra=email_conf(srv.port)
                           + '[backup]\npre_hooks = [["/bin/false"]]\n')
            assert r.returncode == 1, r.stdout + r.stderr
            [msg] = srv.messages()
        assert msg["Subject"].startswith(f"[steward] {HOST}: backup to USB FAILED: nothing "
                                         "committed: ")
        assert "/bin/false" in msg["Subject"]
        assert f"steward: backup to {part} failed: nothing committed" in r.stderr
        assert mounted_at(part) is None
        assert generations(part, tmp_path) == []

    def test_a_drive_mounted_already_is_used_there_and_left_mounted(self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        mine = tmp_path / "mine"
        mine.mkdir()
        sh("mount", part, str(mine))
        try:
            r = backup_usb(tmp_path)
            assert r.returncode == 0, r.stdout + r.stderr
            assert mounted_at(part) == (str(mine), True)
            assert f"The drive stays mounted at {mine}, as it was before." in r.stdout
            assert len(list((mine / "generations").glob("2*"))) == 1
            assert not (tmp_path / "mnt" / uuid(part)).exists()  # nothing mounted there
        finally:
            sh("umount", str(mine))


    def test_a_drive_left_mounted_at_its_own_mount_point_is_unmounted_after(
            self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        own = tmp_path / "mnt" / uuid(part)
        own.mkdir(parents=True)
        sh("mount", part, str(own))  # as a run killed before its unmount leaves it
        try:
            r = backup_usb(tmp_path)
            left = mounted_at(part)
        finally:
            if mounted_at(part) is not None:  # clean up after a failure
                sh("umount", str(own))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "The drive is unmounted: it can be unplugged." in r.stdout
        assert left is None and not own.exists()

    def test_a_second_job_on_the_same_drive_is_refused_while_the_first_runs(
            self, loop_disk, tmp_path):
        _, part = make_drive(loop_disk)
        (tmp_path / "mnt").mkdir()
        with open(tmp_path / "mnt" / f".{uuid(part)}.lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            r = backup_usb(tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"steward: backup to {part} failed: another steward job is using {part}" \
            in r.stderr
        assert mounted_at(part) is None and generations(part, tmp_path) == []

# -- no disks needed -----------------------------------------------------------------------------

def test_usb_options_default_to_notify_under_run_steward_usb():
    opts = build(UsbOptions, {}, "steward.toml", "usb")
    assert (opts.on_insert, opts.mount_dir) == ("notify", "/run/steward/usb")
    assert build(UsbOptions, {"on_insert": "backup"}, "f", "usb").on_insert == "backup"


@pytest.mark.parametrize(("table", "message"), [
    ({"on_insert": "mail"}, 'steward.toml: usb.on_insert = "mail": not one of the choices '
                            '(accepted: "backup", "notify", "ignore")'),
    ({"mount_dir": "run/usb"}, 'steward.toml: usb.mount_dir = "run/usb": not an absolute path '
                               "(accepted: an absolute path)"),
    ({"label": "X"}, "steward.toml: usb.label: unknown key (accepted: on_insert, schedule, "
                     "rescue, mount_dir)"),
])
def test_bad_usb_options_name_the_key_and_what_is_accepted(table, message):
    with pytest.raises(ConfigError) as e:
        build(UsbOptions, table, "steward.toml", "usb")
    assert str(e.value) == message


def test_only_the_root_of_a_filesystem_counts_as_where_it_is_mounted():
    """/dev/null (1:3) stands in for the drive: a bind mount of a folder on it is not where
    the generations folder is; octal escapes are decoded; ro is read-only."""
    bind = "36 25 1:3 /sub /mnt/bind rw,relatime shared:1 - ext4 /dev/x rw\n"
    root = "37 25 1:3 / /media/my\\040stick ro,nosuid - ext4 /dev/x ro\n"
    assert mounted_at("/dev/null", bind) is None
    assert mounted_at("/dev/null", bind + root) == ("/media/my stick", False)
    assert mounted_at("/dev/no-such-device", root) is None
