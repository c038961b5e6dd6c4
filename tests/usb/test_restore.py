"""``steward restore`` onto loop-device disks: a "server" disk (GPT: BIOS boot, ESP, swap,
ext4 root, xfs /srv) is backed up, then rebuilt on a blank disk and compared inode by inode;
saved UUIDs, labels and partition GUIDs come back, or new ones (with fstab fixed) when the
saved ones are still in use; a missing or short archive and wrong disks are refused before
anything is written, and so is a damaged one."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backup.hostile import forge, tar_of, tree
from tests.conftest import run_steward
from tests.fstree import build_tree, diff, snapshot
from tests.usb.conftest import fingerprint, root_loop, sh

pytestmark = root_loop
MiB = 2**20
LAYOUT = ("label: gpt\n"
          "size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
          "size=32MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
          "size=16MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name=swap\n"
          "size=100MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n"
          "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=srv\n")
SIZE = 480  # MiB; xfs needs 300 MiB at least


def blkid(node: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", node, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def nodes(dev: str) -> list[str]:
    return [f"{dev}p{n}" for n in range(1, 6)]


@dataclass
class Server:
    disk: str
    target: Path
    tree: dict[bytes, dict[str, object]]
    ids: dict[str, dict[str, str]]  # partition node suffix (p2..p5) -> blkid record


@pytest.fixture
def mounted() -> Iterator[list[Path]]:
    done: list[Path] = []
    yield done
    for mnt in reversed(done):
        subprocess.run(["umount", "-R", str(mnt)], capture_output=True, timeout=60, check=False)


def mount(dev: str, where: Path, track: list[Path]) -> None:
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", dev, str(where))
    track.append(where)


@pytest.fixture
def server(loop_disk: Callable[[int], str], tmp_path: Path, mounted: list[Path]) -> Server:
    disk = loop_disk(SIZE)
    sh("sfdisk", "--quiet", disk, input=LAYOUT)
    sh("partx", "-u", disk)
    p = nodes(disk)
    sh("mkfs.vfat", "-n", "ESPLBL", p[1])
    sh("mkswap", "-L", "swp", p[2])
    sh("mkfs.ext4", "-q", "-L", "rootfs", p[3])
    sh("mkfs.xfs", "-q", "-f", "-L", "srvfs", p[4])
    src = tmp_path / "src"
    mount(p[3], src, mounted)
    build_tree(src, sparse_size=16 * MiB)
    mount(p[4], src / "srv", mounted)
    (src / "srv/marker").write_text("steward-marker\n")
    os.setxattr(src / "srv/marker", "security.selinux", b"system_u:object_r:etc_t:s0\0")
    sh("setcap", "cap_net_bind_service+ep", str(src / "srv/marker"))
    ids = {f"p{n}": blkid(f"{disk}p{n}") for n in range(2, 6)}
    (src / "etc").mkdir()
    (src / "etc/fstab").write_text(
        f"UUID={ids['p4']['UUID']} / ext4 defaults 0 1\n"
        f"UUID={ids['p5']['UUID']} /srv xfs defaults 0 2\n"
        f"UUID={ids['p2']['UUID']} /boot/efi vfat umask=0077 0 2\n"
        f"PARTUUID={ids['p3']['PART_ENTRY_UUID']} none swap sw 0 0\n")
    (src / "var/log").mkdir(parents=True)
    tree = snapshot(src)
    target = tmp_path / "target"
    target.mkdir()
    r = run_steward("backup", "create", "--source", str(src), "--target", str(target),
                    timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for mnt in reversed(mounted):
        sh("umount", str(mnt))
    mounted.clear()
    return Server(disk, target, tree, ids)


def restore(*args: str) -> subprocess.CompletedProcess[str]:
    return run_steward("restore", *args, timeout=600)


def restored_tree(disk: str, where: Path, track: list[Path]) -> dict[bytes, dict[str, object]]:
    mount(f"{disk}p4", where, track)
    mount(f"{disk}p5", where / "srv", track)
    return snapshot(where)


def _report_only(lines: list[str]) -> list[str]:
    """The restore report is written into the restored /var/log after the files."""
    return [x for x in lines if not x.startswith(("extra: var/log/steward-restore",
                                                  "var/log: mtime", "var/log: ctime"))]


def test_bare_metal_restore_keeps_uuids_labels_and_every_inode(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path,
        mounted: list[Path]) -> None:
    saved = server.disk
    sh("partx", "-d", saved, check=False)
    sh("losetup", "-d", saved)  # the old disk is gone: its UUIDs are free
    new = loop_disk(SIZE)
    r = restore("--target", str(server.target), "--map", f"{saved}={new}", "--yes",
                "--mount-dir", str(tmp_path / "mnt"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "generation whole" in r.stdout and "EVERYTHING ON" in r.stdout
    assert re.search(r"^time: check before writing .* s, disks .* s, extraction .* s, "
                     r".*initramfs .* s, sync .* s$", r.stdout, re.M), r.stdout
    for part, was in server.ids.items():
        now = blkid(f"{new}{part}")
        for key in ("TYPE", "UUID", "LABEL", "PART_ENTRY_UUID", "PART_ENTRY_NAME"):
            assert now.get(key) == was.get(key), (part, key, now, was)
    got = restored_tree(new, tmp_path / "check", mounted)
    assert _report_only(diff(server.tree, got)) == []
    report = (tmp_path / "check/var/log/steward-restore.txt").read_text()
    assert "SELinux: not configured" in report and "boot loader" in report
    assert os.getxattr(tmp_path / "check/srv/marker", "security.selinux") == \
        b"system_u:object_r:etc_t:s0\0"
    assert "cap_net_bind_service=ep" in sh("getcap", str(tmp_path / "check/srv/marker"))


def test_uuids_in_use_here_are_replaced_and_fstab_follows(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path,
        mounted: list[Path]) -> None:
    new = loop_disk(SIZE + 200)  # larger: the last partition grows
    r = restore("--target", str(server.target), "--map", f"{server.disk}={new}", "--yes",
                "--mount-dir", str(tmp_path / "mnt"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "saved UUIDs are in use on this machine" in r.stdout, r.stdout
    assert "grown to the end of the disk" in r.stdout
    restored_tree(new, tmp_path / "check", mounted)
    fstab = (tmp_path / "check/etc/fstab").read_text()
    for part, key in (("p4", "UUID"), ("p5", "UUID"), ("p2", "UUID"),
                      ("p3", "PART_ENTRY_UUID")):
        old, now = server.ids[part][key], blkid(f"{new}{part}")[key]
        assert old != now
        assert old.lower() not in fstab.lower() and now in fstab, (part, fstab)
    assert blkid(f"{new}p4")["LABEL"] == "rootfs"
    was = int(server.ids["p5"]["PART_ENTRY_SIZE"]) * 512
    assert int(sh("blockdev", "--getsize64", f"{new}p5")) >= was + 199 * MiB


def _flip_middle_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_damaged_archive_is_found_before_any_disk_is_written(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path) -> None:
    """One flipped byte in the middle of an archive: refused, with --plan and without, before
    the target disk is touched (its content may still be needed). The extraction's own hash
    (an archive read differently the second time) is tested in
    tests/backup/test_parallel_restore.py."""
    gen = next(p for p in server.target.iterdir() if p.name[0].isdigit())
    seg = max((gen / "segments").glob("*.tar.zst"), key=lambda p: p.stat().st_size)
    _flip_middle_byte(seg)
    new = loop_disk(SIZE)
    before = fingerprint(new)
    for extra in ("--plan", "--yes"):
        r = restore(gen.name, "--target", str(server.target), "--map",
                    f"{server.disk}={new}", extra, "--mount-dir", str(tmp_path / "mnt"))
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"DAMAGED: segments/{seg.name}: damaged (sha256 differs); it holds" in r.stdout
        assert "nothing was written to any disk" in r.stdout and "extracting" not in r.stdout
        assert "Traceback" not in r.stderr
        assert fingerprint(new) == before


def test_a_missing_or_short_archive_is_found_before_any_disk_is_written(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path) -> None:
    gen = next(p for p in server.target.iterdir() if p.name[0].isdigit())
    segs = sorted((gen / "segments").glob("*.tar.zst"))
    with open(segs[0], "r+b") as f:
        f.truncate(segs[0].stat().st_size - 1)
    segs[-1].unlink()
    new = loop_disk(SIZE)
    before = fingerprint(new)
    r = restore(gen.name, "--target", str(server.target), "--map", f"{server.disk}={new}",
                "--yes", "--mount-dir", str(tmp_path / "mnt"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(rf"^DAMAGED: segments/{segs[0].name}: damaged \(\d+ bytes, not the \d+ "
                     r"written\); it holds", r.stdout, re.M), r.stdout
    assert f"DAMAGED: segments/{segs[-1].name}: unreadable: No such file" in r.stdout
    assert "nothing was written to any disk" in r.stdout
    assert fingerprint(new) == before


def test_wrong_disks_and_missing_confirmation_are_refused(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path,
        mounted: list[Path]) -> None:
    busy = loop_disk(SIZE)
    sh("mkfs.ext4", "-q", busy)
    mount(busy, tmp_path / "busy", mounted)
    r = restore("--target", str(server.target), "--map", f"{server.disk}={busy}", "--yes")
    assert r.returncode == 2 and "refusing to restore onto" in r.stderr and "mounted" in r.stderr
    small = loop_disk(64)
    r = restore("--target", str(server.target), "--map", f"{server.disk}={small}", "--yes")
    assert r.returncode == 2 and "too small" in r.stderr, r.stderr
    new = loop_disk(SIZE)
    before = fingerprint(new)
    r = restore("--target", str(server.target), "--map", f"{server.disk}={new}")
    assert r.returncode == 2 and "not a terminal" in r.stderr
    r = restore("--target", str(server.target), "--map", f"/dev/nosuch={new}", "--yes")
    assert r.returncode == 2 and "no such disk in the saved layout" in r.stderr
    assert fingerprint(new) == before
    assert "Traceback" not in r.stderr
    shutil.rmtree(tmp_path / "busy", ignore_errors=True)


def test_a_hostile_generation_cannot_write_into_the_rescue_system(
        server: Server, loop_disk: Callable[[int], str], tmp_path: Path) -> None:
    """A segment's symlink (etc2 -> a folder of this, the rescue, host) and a later segment's
    etc2/pwned: the generation is checksummed anew, as whoever writes the drive can do."""
    host = tmp_path / "rescue-host"
    host.mkdir()
    (host / "keep").write_text("rescue system file\n")
    before = tree(host)
    gen = next(p for p in server.target.iterdir() if p.name[0].isdigit())
    link, file = tmp_path / "scratch-link", tmp_path / "scratch-file"
    link.mkdir()
    os.symlink(host, link / "etc2")
    (file / "etc2").mkdir(parents=True)
    (file / "etc2/pwned").write_text("pwned\n")
    fss = json.loads((gen / "manifest.json").read_text())["filesystems"]
    root_fs = next(i for i, fs in enumerate(fss) if fs["prefix"] == "")
    forge(gen, [("data", tar_of(link, ["etc2"])), ("data", tar_of(file, ["etc2/pwned"]))],
          fs=root_fs, keep=True)
    new = loop_disk(SIZE)
    r = restore("--target", str(server.target), "--map", f"{server.disk}={new}", "--yes",
                "--mount-dir", str(tmp_path / "mnt"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused /etc2/pwned (segments/" in r.stdout and \
        "/etc2 is a symlink in this generation" in r.stdout, r.stdout
    assert "restore FAILED: 1 members of" in r.stdout and "Traceback" not in r.stderr
    assert tree(host) == before
