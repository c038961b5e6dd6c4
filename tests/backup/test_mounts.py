"""What a backup reads: local filesystems below the source each as their own, pseudo and
memory filesystems only as a mount point, excludes and the target left out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from backup.mounts import Filesystem, Mount, SourceLayout, parse_mountinfo, source_layout
from backup.plan import Cutter, cut
from backup.walk import Entry, Excludes, Walked, walk
from tests.backup.conftest import backup, generations, write_config
from tests.fstree import have_loop, loop_fs


@pytest.mark.root
@pytest.mark.skipif(not have_loop(), reason="needs root and loop devices")
def test_nested_filesystems_pseudo_mounts_excludes_and_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (src / "run").mkdir()
    (src / "cache").mkdir()
    (src / "cache" / "big.tmp").write_bytes(b"x" * 1000)
    (src / "cache" / "keep").write_text("kept\n")
    (src / "var").mkdir()
    target = src / "backups"  # a target inside the source is never archived
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(src / "run")],
                   check=True, timeout=30)
    try:
        (src / "run" / "pid").write_text("1\n")
        os.chmod(src / "run", 0o711)
        with loop_fs("ext4", 32, tmp_path) as var:
            subprocess.run(["mount", "--bind", str(var), str(src / "var")], check=True,
                           timeout=30)
            try:
                (src / "var" / "spool").mkdir()
                (src / "var" / "spool" / "mail").write_text("mail\n")
                cfg = write_config(tmp_path / "c.toml",
                                   '[backup]\nexclude = ["/run/*", "*.tmp"]\n')
                r = backup("create", "--source", str(src), "--target", str(target),
                           config=cfg)
                assert r.returncode == 0, r.stderr
            finally:
                subprocess.run(["umount", str(src / "var")], check=True, timeout=30)
    finally:
        subprocess.run(["umount", str(src / "run")], check=True, timeout=30)
    gen = target / str(generations(target)[0]["id"])
    manifest = json.loads((gen / "manifest.json").read_text())
    assert [fs["prefix"] for fs in manifest["filesystems"]] == ["", "var"]
    out = tmp_path / "out"
    r = backup("restore-file", gen.name, "/", "--to", str(out), "--target", str(target))
    assert r.returncode == 0, r.stderr
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert "var/spool/mail" in names and "etc/hosts" in names and "cache/keep" in names
    assert "cache/big.tmp" not in names and "run/pid" not in names
    assert not any(n.startswith("backups/") for n in names)
    assert stat.S_IMODE(os.stat(out / "run").st_mode) == 0o711  # the mount point stays


def test_mountinfo_is_parsed_with_escapes() -> None:
    text = ("36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/sda1 rw\n"
            "37 35 98:0 /sub /srv/bind rw - ext4 /dev/sda1 rw\n"
            "38 35 0:5 / /proc rw - proc proc rw\n")
    mounts = parse_mountinfo(text)
    assert mounts[0] == Mount("/mnt/with space", "/dev/sda1", "ext4", "/", "rw,noatime")
    assert mounts[0].local and not mounts[1].local and not mounts[2].local


def test_source_layout_walks_local_filesystems_and_stops_at_others() -> None:
    m = [Mount("/", "/dev/sda2", "xfs", "/", "rw"), Mount("/boot", "/dev/sda1", "xfs", "/", "rw"),
         Mount("/proc", "proc", "proc", "/", "rw"), Mount("/srv/nfs", "h:/x", "nfs4", "/", "rw"),
         Mount("/var", "/dev/sda3", "ext4", "/", "rw"),
         Mount("/mnt/again", "/dev/sda3", "ext4", "/", "rw"),
         Mount("/proc/sys/fs/binfmt_misc", "binfmt", "binfmt_misc", "/", "rw")]
    lay = source_layout("/", m)
    assert [f.prefix for f in lay.filesystems] == ["", "boot", "var"]
    assert lay.boundaries == {"boot": "filesystem", "proc": "proc", "var": "filesystem",
                              "mnt/again": "mounted twice", "srv/nfs": "nfs4"}
    sub = source_layout("/var", m)
    assert [(f.prefix, f.read_root) for f in sub.filesystems] == [("", "/var")]


def test_excludes_anchor_paths_and_match_names() -> None:
    ex = Excludes(["/proc/*", "*.tmp", "/var/cache/dnf/*"])
    assert ex(b"/proc/1") and ex(b"/proc/1/fd") and not ex(b"/proc")
    assert ex(b"/home/a/x.tmp") and not ex(b"/home/a/x.tmpl")
    assert ex(b"/var/cache/dnf/x") and not ex(b"/var/cache/dnfx")


def test_excludes_tell_which_directories_need_no_test() -> None:
    """The walk tests a directory's entries only where some pattern could match one of them;
    wherever ``within`` says none can, none does."""
    patterns = ["/proc/*", "/var/cache/dnf/*", "/va?/l*/x", "/home/[ab]*/tmp", "/srv/x"]
    ex = Excludes(patterns)
    assert ex.within(b"/") and ex.within(b"/proc/") and ex.within(b"/var/cache/")
    assert ex.within(b"/home/") and ex.within(b"/home/alice/")  # from '[' on: anything
    assert not ex.within(b"/usr/") and not ex.within(b"/proc2/")
    assert not Excludes([]).within(b"/") and Excludes(["*.tmp"]).within(b"/usr/")
    dirs = [b"/", b"/proc/", b"/proc/1/", b"/var/", b"/var/cache/", b"/var/cache/dnf/",
            b"/var/log/", b"/vax/", b"/home/", b"/home/ann/", b"/home/cy/", b"/srv/",
            b"/srv/x/", b"/usr/", b"/usr/share/"]
    names = [b"x", b"1", b"dnf", b"cache", b"log", b"tmp", b"proc", b"lib", b"bx"]
    for d in dirs:
        if not ex.within(d):
            assert not [n for n in names if ex(d + n, n)], d
    assert ex(b"/var/log/x") and ex(b"/home/bob/tmp") and ex(b"/srv/x")


def test_a_directory_replaced_or_removed_while_walking_is_not_followed(tmp_path: Path) -> None:
    """Names are looked up in each directory's descriptor: one that became a symlink once it
    was listed is not walked into (its new target may be anywhere), one removed is passed."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    for d in ("a", "b", "c", "outside"):
        (src / d if d != "outside" else outside).mkdir(parents=True)
    (src / "a" / "x").write_text("x\n")
    (src / "b" / "y").write_text("y\n")
    (src / "c" / "z").write_text("z\n")
    (outside / "secret").write_text("not in the source\n")
    seen: list[bytes] = []

    def on_file(e: Entry) -> None:
        seen.append(e.name)
        if e.name == b"a/x":  # b and c were listed with the root, not yet walked
            (src / "b" / "y").unlink()
            (src / "b").rmdir()
            (src / "b").symlink_to(outside)
            (src / "c" / "z").unlink()
            (src / "c").rmdir()

    mount = Mount("/", "/dev/x", "ext4", "/", "rw")
    fs = Filesystem("", str(src), mount)
    w = walk(fs, SourceLayout(str(src), (fs,), {}), Excludes([]), on_file=on_file)
    assert seen == [b"a/x"]
    assert [e.name for e in w.dirs] == [b".", b"a", b"b", b"c"]
    assert w.nfiles == 1


def test_a_read_root_given_as_a_symlink_is_walked(tmp_path: Path) -> None:
    """Only directories found by the walk are never followed; the root it is given may be a
    link (a caller's source, a snapshot's mount point)."""
    (tmp_path / "real" / "d").mkdir(parents=True)
    (tmp_path / "real" / "d" / "f").write_text("f\n")
    (tmp_path / "link").symlink_to("real")
    fs = Filesystem("", str(tmp_path / "link"), Mount("/", "/dev/x", "ext4", "/", "rw"))
    w = walk(fs, SourceLayout(str(tmp_path / "link"), (fs,), {}), Excludes([]))
    assert [e.name for e in w.files] == [b"d/f"] and [e.name for e in w.dirs] == [b".", b"d"]


def _entries(names: list[str]) -> Walked:
    st = os.stat_result((stat.S_IFREG | 0o644, 1, 1, 1, 0, 0, 300_000, 0, 0, 0),
                        {"st_blocks": 600, "st_mtime_ns": 0, "st_ctime_ns": 0, "st_rdev": 0})
    return Walked([Entry(n.encode(), st) for n in names], [])


def test_segments_are_cut_by_content_so_an_insert_changes_one() -> None:
    names = [f"d{n // 100:03d}/f{n:05d}" for n in range(20_000)]  # ~6 GB of 300 kB files
    before = [s.key() for s in cut(0, _entries(names))]
    assert 60 < len(before) < 250
    names.insert(7777, "d077/f07777-new")
    after = [s.key() for s in cut(0, _entries(names))]
    assert len(set(after) - set(before)) <= 2  # its own segment (split in two at most)


def _st(ino: int, nlink: int, size: int) -> os.stat_result:
    return os.stat_result((stat.S_IFREG | 0o644, ino, 1, nlink, 0, 0, size, 0, 0, 0),
                          {"st_blocks": size // 512, "st_mtime_ns": 0, "st_ctime_ns": 0,
                           "st_rdev": 0})


def test_segments_go_out_while_the_walk_runs_except_those_later_hard_links_join() -> None:
    """Cutting while walking: a segment is handed over once final; one holding the first
    name of a hard-linked inode waits for the walk's end, when every later name is in it."""
    emitted: list[list[bytes]] = []
    c = Cutter(0, lambda seg: emitted.append([e.name for e in seg.members]))
    c.file(Entry(b"a/linked", _st(1, 2, 4096)))
    c.file(Entry(b"a/big-linked", _st(2, 2, 64 << 20)))  # large: a segment of its own
    for n in range(400):  # ~400 MB of plain files: several segments cut meanwhile
        c.file(Entry(f"b/f{n:03d}".encode(), _st(100 + n, 1, 1 << 20)))
    before_end = len(emitted)
    assert before_end >= 2
    assert not any(b"a/linked" in names or b"a/big-linked" in names for names in emitted)
    c.file(Entry(b"z/second-name", _st(1, 2, 4096)))
    c.file(Entry(b"z/big-second-name", _st(2, 2, 64 << 20)))
    c.finish([Entry(b".", _st(9, 2, 0))])
    held = emitted[before_end:]
    assert [b"a/big-linked", b"z/big-second-name"] in held
    assert any(names[0] == b"a/linked" and names[-1] == b"z/second-name" for names in held)
    assert emitted[-1] == [b"."]  # directories last
    everything = [n for names in emitted for n in names]
    assert len(everything) == len(set(everything)) == 405
