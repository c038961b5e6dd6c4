"""Self-test of tests/fstree.py: the tree really has every hard case, snapshots see them all."""

from __future__ import annotations

import os
import stat

import pytest

from tests.fstree import SELINUX, build_tree, diff, have_loop, have_mkfs, loop_fs, remake, snapshot

GIB = 2**30
SIZES = {"ext4": 128, "xfs": 300}

on_loop = [pytest.mark.root,
           pytest.mark.skipif(not have_loop(), reason="needs root and loop devices")]


def fs_param(fstype: str):
    return pytest.param(fstype, marks=[*on_loop, pytest.mark.skipif(
        not have_mkfs(fstype), reason=f"mkfs.{fstype} missing")])


FSTYPES = [fs_param("ext4"), fs_param("xfs")]


@pytest.fixture
def built(request, tmp_path):
    fstype = request.param
    with loop_fs(fstype, SIZES[fstype], tmp_path) as mnt:
        build_tree(mnt, sparse_size=2 * GIB)
        yield mnt, snapshot(mnt)


@pytest.mark.parametrize("built", FSTYPES, indirect=True)
def test_snapshot_sees_every_category(built):
    mnt, snap = built
    kinds = {e["type"] for e in snap.values()}
    assert kinds == {"file", "dir", "symlink", "chr", "blk", "fifo"}
    assert snap[b"."]["type"] == "dir" and b"lost+found" not in snap
    assert snap[b"empty"]["nlink"] == 2 and not any(p.startswith(b"empty/") for p in snap)
    assert snap[b"data/random-0"]["size"] == 0 and snap[b"data/random-0"]["datamap"] == []
    assert snap[b"data/a/b/c/d/nested"]["type"] == "file"

    links = (b"links/a", b"links/sub/b", b"other/c")
    for name in links:
        assert snap[name]["links"] == links and snap[name]["nlink"] == 3
        assert snap[name]["xattrs"] == {"user.linked": b"yes"}
    assert "links" not in snap[b"data/random-1"]

    sparse = snap[b"sparse"]
    assert sparse["size"] == 2 * GIB and sparse["sparse"]
    assert os.lstat(mnt / "sparse").st_blocks * 512 < 2**20
    assert sparse["datamap"] == [(64 * 1024, 4096), (GIB - 3 * 4096, 4 * 4096),
                                 (2 * GIB - 2**20, 2 * 4096)]
    assert not snap[b"data/random-1048583"]["sparse"]

    for name in (b"xattr/labelled", b"xattr/dir", b"xattr/cap", b"xattr/link", b"special/null"):
        assert snap[name]["xattrs"]["security.selinux"] == SELINUX, name
    assert snap[b"xattr/labelled"]["xattrs"]["trusted.steward"] == b"t"
    assert snap[b"xattr/user"]["xattrs"] == {"user.comment": b"binary \x00\xff value",
                                             "user.empty": b""}
    for name in (b"xattr/cap", b"xattr/cap-suid"):
        assert snap[name]["xattrs"]["security.capability"].startswith(b"\x01\x00\x00\x02")
    assert snap[b"xattr/cap-suid"]["mode"] == stat.S_IFREG | 0o4755
    assert "system.posix_acl_access" in snap[b"acl/file"]["xattrs"]
    assert "system.posix_acl_default" in snap[b"acl/inherit"]["xattrs"]
    assert "system.posix_acl_access" in snap[b"acl/inherit/child"]["xattrs"]
    assert {"system.posix_acl_access", "system.posix_acl_default"} <= set(
        snap[b"acl/inherit/subdir"]["xattrs"])

    assert snap[b"special/null"] | {"xattrs": {}} == {
        "type": "chr", "mode": stat.S_IFCHR | 0o666, "uid": 4242, "gid": 4343, "size": 0,
        "rdev": (1, 3), "nlink": 1, "mtime_ns": snap[b"special/null"]["mtime_ns"], "xattrs": {}}
    assert snap[b"special/loop200"]["type"] == "blk"
    assert snap[b"special/loop200"]["rdev"] == (7, 200)
    assert snap[b"special/fifo"]["type"] == "fifo"
    assert snap[b"special/rel"]["target"] == b"../data/a/nested"
    assert snap[b"special/rel"]["uid"] == 4242
    assert snap[b"special/abs"]["target"] == b"/etc/hostname"
    assert snap[b"special/dangling"]["target"] == b"does/not/exist"
    assert snap[b"special/latin1-target"]["target"] == b"caf\xe9"
    assert snap[b"special/dirlink"]["type"] == "symlink"
    assert not any(p.startswith(b"special/dirlink/") for p in snap)

    assert snap[b"owners/dir"]["uid"] == 4242 and snap[b"owners/dir"]["gid"] == 4343
    modes = {name: stat.S_IMODE(snap[b"modes/" + name]["mode"]) for name in (
        b"setuid", b"setgid", b"zero", b"suid-owned", b"sticky", b"setgid-dir", b"private")}
    assert modes == {b"setuid": 0o4755, b"setgid": 0o2755, b"zero": 0, b"suid-owned": 0o6750,
                     b"sticky": 0o1777, b"setgid-dir": 0o2775, b"private": 0o700}
    assert snap[b"modes/suid-owned"]["uid"] == 4242
    assert stat.S_IMODE(snap[b"ro"]["mode"]) == 0o555

    for name in (b"n" * 255, "é".encode() * 127 + b"x", b"caf\xe9", b"\xff\xfe-bin",
                 b"new\nline", b"dir-\xe9/inner-\xff"):
        assert snap[b"names/" + name]["type"] == "file", name
    assert max(len(p) for p in snap) > 1000

    mtimes = [e["mtime_ns"] for p, e in snap.items() if not p.startswith(b"times/")]
    assert all(ns % 10**9 for ns in mtimes)  # nanoseconds everywhere, directories included
    assert snap[b"times/pre1970"]["mtime_ns"] == -999_999_999_012_345_679
    assert snap[b"times/future"]["mtime_ns"] == 4_102_444_800_123_456_789
    assert snap[b"times/epoch"]["mtime_ns"] == 0
    assert not any(k in e for e in snap.values() for k in ("atime_ns", "ctime_ns", "ino"))


@pytest.mark.parametrize("built", FSTYPES, indirect=True)
def test_diff_reports_exactly_what_changed(built):
    mnt, snap = built
    assert diff(snap, snapshot(mnt)) == []
    os.chmod(mnt / "data/random-1", 0o600)
    assert diff(snap, snapshot(mnt)) == ["data/random-1: mode 0o100644 != 0o100600"]
    os.chmod(mnt / "data/random-1", 0o644)
    os.setxattr(os.path.join(os.fsencode(mnt), b"names/caf\xe9"), "user.x", b"1")
    assert diff(snap, snapshot(mnt)) == [r"b'names/caf\xe9': xattr user.x None != b'1'"]
    os.setxattr(mnt / "xattr/labelled", "security.selinux", b"other\x00")
    assert len(diff(snap, snapshot(mnt))) == 2
    os.unlink(mnt / "other/c")
    lines = diff(snap, snapshot(mnt))
    assert "missing: other/c" in lines
    assert "links/a: nlink 3 != 2" in lines


@pytest.mark.parametrize("fstype", FSTYPES)
def test_remake_wipes_and_remounts(fstype, tmp_path):
    with loop_fs(fstype, SIZES[fstype], tmp_path) as mnt:
        (mnt / "file").write_text("x")
        remake(mnt)
        assert os.path.ismount(mnt)
        assert set(snapshot(mnt)) == {b"."}
        build_tree(mnt, sparse_size=64 * 2**20)
        assert snapshot(mnt)[b"sparse"]["sparse"]
    assert not mnt.exists() and not list(tmp_path.glob("*.img"))


def test_digest_ignores_allocation(tmp_path):
    """Same bytes, once with a hole and once with written zeros: same digest, other data map."""
    data = os.urandom(4096)
    with open(tmp_path / "holey", "wb") as f:
        f.truncate(3 * 4096)
        f.seek(2 * 4096)
        f.write(data)
    (tmp_path / "dense").write_bytes(bytes(2 * 4096) + data)
    snap = snapshot(tmp_path)
    holey, dense = snap[b"holey"], snap[b"dense"]
    assert holey["sha256"] == dense["sha256"]
    assert dense["datamap"] == [(0, 3 * 4096)]
    if holey["datamap"] != dense["datamap"]:  # the fs under tmp_path supports holes
        assert holey["datamap"] == [(2 * 4096, 4096)]
    (tmp_path / "dense").write_bytes(bytes(2 * 4096) + data[:-1] + b"\x01")
    assert snapshot(tmp_path)[b"dense"]["sha256"] != holey["sha256"]
