"""Real filesystems on loop devices, a tree of every hard inode case, and snapshots to compare.

Backup/restore tests use this as: ``with loop_fs("ext4", 256, tmp_path) as mnt:
build_tree(mnt); before = snapshot(mnt); <backup>; remake(mnt); <restore>;
assert diff(before, snapshot(mnt)) == []``.

A snapshot holds everything a restore can put back: type, full ``st_mode`` (incl. setuid, setgid,
sticky), numeric uid/gid, size (not for directories), mtime in ns, rdev of devices, nlink, symlink
target, content digest and data/hole map of regular files, every xattr of every namespace as raw
bytes (``security.selinux``, ``security.capability``, ``system.posix_acl_access``/``default``,
``trusted.*``, ``user.*``) and which paths share an inode. Left out because no restore can set
them: ctime (the kernel stamps "now" on every inode change; there is no syscall to set it), atime
(preservable in principle, but reading the tree to back it up or to snapshot it changes it under
relatime), the birth time (statx btime, like ctime), inode numbers (allocated by the filesystem)
and the ``st_size`` of directories (depends on the fs and on the history of its entries).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 4096
SELINUX = b"system_u:object_r:httpd_sys_content_t:s0\x00"
# Inodes with nanosecond times beyond 2038 asked for, not left to the mkfs version's default:
# bookworm's (and EL9's e2fsprogs 1.46.5) give a small ext4 256-byte inodes, bullseye's
# 1.46.2 128-byte ones (whole seconds, 1901..2038); xfs bigtime is the default from xfsprogs
# 5.15 (bookworm 6.1; bullseye 5.10 and EL9 5.14 have it as an option only).
_MKFS = {"ext4": ["mkfs.ext4", "-q", "-F", "-I", "256"],
         "xfs": ["mkfs.xfs", "-q", "-f", "-m", "bigtime=1"]}
_LOOPS: dict[Path, tuple[str, str]] = {}  # mount point -> (loop device, fstype)
Snapshot = dict[bytes, dict[str, Any]]  # relative path -> attribute name -> value


def _run(*argv: str | bytes | os.PathLike[str], timeout: float = 120) -> str:
    args = [os.fsdecode(a) for a in argv]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise RuntimeError(f"{args} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def have_loop() -> bool:
    """True when loop devices can be set up here: root, /dev/loop-control and losetup."""
    return (os.geteuid() == 0 and os.path.exists("/dev/loop-control")
            and shutil.which("losetup") is not None)


def have_mkfs(fstype: str) -> bool:
    return shutil.which(_MKFS[fstype][0]) is not None


def _umount(mnt: Path) -> None:
    for _ in range(5):
        done = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    _run("umount", "-l", mnt, timeout=60)


@contextlib.contextmanager
def loop_fs(fstype: str, size_mb: int, base: Path, options: str = "") -> Iterator[Path]:
    """A fresh ``fstype`` filesystem of ``size_mb`` on a loop device, mounted with
    ``options``; yields its mount point."""
    if fstype == "xfs" and size_mb < 300:
        raise ValueError("xfs needs at least 300 MB")
    n = 0
    while (base / f"mnt-{fstype}-{n}").exists() or (base / f"{fstype}-{n}.img").exists():
        n += 1
    img, mnt = base / f"{fstype}-{n}.img", base / f"mnt-{fstype}-{n}"
    with open(img, "wb") as f:
        f.truncate(size_mb * 2**20)
    dev, mounted = "", False
    try:
        dev = _run("losetup", "-f", "--show", img).strip()
        _run(*_MKFS[fstype], dev)
        mnt.mkdir()
        _run("mount", "-t", fstype, *(("-o", options) if options else ()), dev, mnt)
        mounted = True
        _LOOPS[mnt] = (dev, fstype)
        yield mnt
    finally:
        _LOOPS.pop(mnt, None)
        if mounted and os.path.ismount(mnt):
            _umount(mnt)
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60, check=False)
        img.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def remake(mountpoint: Path) -> None:
    """Wipe a ``loop_fs``: unmount, mkfs the same loop device again, mount at the same place."""
    dev, fstype = _LOOPS[mountpoint]
    _umount(mountpoint)
    _run(*_MKFS[fstype], dev)
    _run("mount", "-t", fstype, dev, mountpoint)


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def build_tree(root: Path, sparse_size: int = 2 * 2**30) -> None:
    """Fill ``root`` (best an empty, freshly made filesystem; needs root, setcap and setfacl).

    Plain files of many sizes, nested and empty directories, a file with 3 hard links, a sparse
    file of ``sparse_size`` with data islands and a trailing hole, security.selinux / trusted /
    user xattrs (also on a directory and a symlink), file capabilities, access and default ACLs
    (and their inheritance), char/block devices, a fifo, relative/absolute/dangling symlinks,
    numeric owners without passwd entries, setuid/setgid/sticky, mode 0000, a read-only
    directory, 255-byte and non-UTF-8 names, a path over 1000 bytes, and distinct nanosecond
    mtimes on everything (symlinks and directories included; far future and pre-1970 ones too).
    """
    assert sparse_size >= 16 * 2**20 and sparse_size % BLOCK == 0
    r = os.fsencode(root)

    def p(*parts: bytes) -> bytes:
        return os.path.join(r, *parts)

    old_umask = os.umask(0o022)
    try:
        rnd = random.Random(4242)
        for d in (b"data/a/b/c/d", b"empty", b"links/sub", b"other", b"special", b"owners",
                  b"modes", b"names", b"xattr/dir", b"acl", b"times", b"ro"):
            os.makedirs(p(d))
        for size in (0, 1, 4095, 4096, 4097, 65539, 2**20 + 7):
            _write(p(b"data", b"random-%d" % size), rnd.randbytes(size))
            _write(p(b"data/a/b", b"text-%d" % size), (b"steward backs up " * size)[:size])
        for depth, d in enumerate((b"data/a", b"data/a/b/c", b"data/a/b/c/d")):
            _write(p(d, b"nested"), b"depth %d\n" % depth)
        # one inode, three names in three directories; the xattr is shared by all of them
        _write(p(b"links/a"), rnd.randbytes(10000))
        os.link(p(b"links/a"), p(b"links/sub/b"))
        os.link(p(b"links/a"), p(b"other/c"))
        os.setxattr(p(b"links/a"), "user.linked", b"yes")
        # sparse: size fixed first so no write lands past EOF (xfs would zero-fill up to it)
        with open(p(b"sparse"), "wb") as f:
            f.truncate(sparse_size)
            for off, n in ((64 * 1024, BLOCK), (sparse_size // 2 - 3 * BLOCK, 4 * BLOCK),
                           (sparse_size - 2**20, 2 * BLOCK)):
                f.seek(off)
                f.write(rnd.randbytes(n))
        # devices, fifo, symlinks
        os.mknod(p(b"special/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(p(b"special/loop200"), 0o660 | stat.S_IFBLK, os.makedev(7, 200))
        os.mkfifo(p(b"special/fifo"))
        for name, mode in ((b"null", 0o666), (b"loop200", 0o660), (b"fifo", 0o640)):
            os.chmod(p(b"special", name), mode)  # mknod and mkfifo go through the umask
        os.symlink(b"../data/a/nested", p(b"special/rel"))
        os.symlink(b"/etc/hostname", p(b"special/abs"))
        os.symlink(b"does/not/exist", p(b"special/dangling"))
        os.symlink(b"../data", p(b"special/dirlink"))
        os.symlink(b"caf\xe9", p(b"special/latin1-target"))
        # numeric owners (chown before chmod and setcap: chown clears setuid and capabilities)
        _write(p(b"owners/file"), b"owned\n")
        os.mkdir(p(b"owners/dir"))
        for name in (b"file", b"dir", b"../special/null", b"../special/fifo", b"../special/rel"):
            os.lchown(p(b"owners", name), 4242, 4343)
        for name, mode in ((b"setuid", 0o4755), (b"setgid", 0o2755), (b"zero", 0o000),
                           (b"suid-owned", 0o6750)):
            _write(p(b"modes", name), b"#!/bin/sh\n")
            if name == b"suid-owned":
                os.chown(p(b"modes", name), 4242, 4343)
            os.chmod(p(b"modes", name), mode)
        for name, mode in ((b"sticky", 0o1777), (b"setgid-dir", 0o2775), (b"private", 0o700)):
            os.mkdir(p(b"modes", name))
            os.chmod(p(b"modes", name), mode)
        # names
        names = (b"n" * 255, "é".encode() * 127 + b"x", b"caf\xe9", b"\xff\xfe-bin",
                 b" lead space", b"-dash", b"new\nline", b"back\\slash")
        for name in names:
            _write(p(b"names", name), name + b"\n")
        os.mkdir(p(b"names/dir-\xe9"))
        _write(p(b"names/dir-\xe9/inner-\xff"), b"inner\n")
        deep = os.path.join(p(b"names/deep"), *[b"%d" % i + b"d" * 199 for i in range(6)])
        os.makedirs(deep)
        _write(os.path.join(deep, b"leaf"), b"deep\n")
        assert len(os.path.relpath(os.path.join(deep, b"leaf"), r)) > 1000
        # capabilities (after the content is written: writing clears them)
        _write(p(b"xattr/cap"), b"\x7fELF pretend\n")
        _write(p(b"xattr/cap-suid"), b"\x7fELF pretend\n")
        os.chmod(p(b"xattr/cap-suid"), 0o4755)
        for name in (b"cap", b"cap-suid"):
            _run("setcap", "cap_net_bind_service=+ep", p(b"xattr", name))
        # xattrs of other namespaces, also on a directory, a symlink and a device
        _write(p(b"xattr/labelled"), b"web page\n")
        _write(p(b"xattr/user"), b"user xattrs\n")
        os.symlink(b"labelled", p(b"xattr/link"))
        for name in (b"labelled", b"dir", b"cap", b"link", b"../special/null"):
            os.setxattr(p(b"xattr", name), "security.selinux", SELINUX, follow_symlinks=False)
        os.setxattr(p(b"xattr/user"), "user.comment", b"binary \x00\xff value")
        os.setxattr(p(b"xattr/user"), "user.empty", b"")
        os.setxattr(p(b"xattr/labelled"), "trusted.steward", b"t")
        # ACLs: access ACL on a file, default ACL on a directory and what it passes on
        _write(p(b"acl/file"), b"acl\n")
        _run("setfacl", "-m", "u:1234:rw", p(b"acl/file"))
        os.mkdir(p(b"acl/inherit"))
        _run("setfacl", "-d", "-m", "g:2345:rx", p(b"acl/inherit"))
        _write(p(b"acl/inherit/child"), b"inherits an access ACL\n")
        os.mkdir(p(b"acl/inherit/subdir"))  # inherits access and default ACL
        # read-only directory
        _write(p(b"ro/inside"), b"ro\n")
        os.chmod(p(b"ro"), 0o555)
        # mtimes: files first, then special ones, then directories deepest first
        for top, dirs, files in os.walk(r):
            dirs.sort()  # a hard-linked inode gets the mtime of its last name, so fix the order
            for name in sorted(files) + [d for d in sorted(dirs)
                                         if os.path.islink(os.path.join(top, d))]:
                path = os.path.join(top, name)
                os.utime(path, ns=(_mtime(path), _mtime(path)), follow_symlinks=False)
        for name, ns in ((b"future", 4_102_444_800_123_456_789), (b"epoch", 0),
                         (b"pre1970", -999_999_999_012_345_679), (b"whole", 1_700_000_000 * 10**9)):
            _write(p(b"times", name), name)
            os.utime(p(b"times", name), ns=(ns, ns))
        for top, _dirs, _files in os.walk(r, topdown=False):
            os.utime(top, ns=(_mtime(top), _mtime(top)))
    finally:
        os.umask(old_umask)


def _mtime(path: bytes) -> int:
    """A distinct, stable mtime (2017..2020, never a whole second) derived from the name."""
    h = int.from_bytes(hashlib.sha256(os.path.basename(path)).digest()[:8], "big")
    return 1_500_000_000 * 10**9 + h % 10**17 | 1


_ZERO = bytes(BLOCK)


def _content(fd: int, size: int) -> tuple[str, list[tuple[int, int]]]:
    """(digest, data map): the digest covers (offset, block) of every non-zero 4 KiB block, so it
    depends on the logical content only; the map lists data regions found with SEEK_DATA."""
    h, pos = hashlib.sha256(), 0
    regions: list[tuple[int, int]] = []
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        lo, hi = start // BLOCK * BLOCK, -(-end // BLOCK) * BLOCK
        if regions and regions[-1][0] + regions[-1][1] >= lo:
            lo = regions.pop()[0]
        regions.append((lo, hi - lo))
        off = start // BLOCK * BLOCK
        while off < end:
            chunk = os.pread(fd, min(2**20, end - off), off)
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                for i in range(0, len(chunk), BLOCK):
                    block = chunk[i:i + BLOCK]
                    if block.count(0) != len(block):
                        h.update((off + i).to_bytes(8, "big") + block)
            off += len(chunk)
        pos = end
    h.update(size.to_bytes(8, "big"))
    return h.hexdigest(), regions


_TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "sock"}


def _entry(path: bytes) -> tuple[dict[str, Any], os.stat_result]:
    st = os.lstat(path)
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    e: dict[str, Any] = {"type": kind, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid,
                         "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink}
    if kind != "dir":
        e["size"] = st.st_size
    if kind in ("chr", "blk"):
        e["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif kind == "symlink":
        e["target"] = os.readlink(path)
    elif kind == "file":
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            e["sha256"], e["datamap"] = _content(fd, st.st_size)
        finally:
            os.close(fd)
        e["sparse"] = st.st_blocks * 512 < st.st_size / 2
    e["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False)
                   for n in sorted(os.listxattr(path, follow_symlinks=False))}
    return e, st


def snapshot(root: Path, ignore: tuple[bytes, ...] = (b"lost+found",)) -> Snapshot:
    """Every preservable attribute of every entry under ``root``, keyed by relative bytes path
    (``b"."`` for root itself). ``ignore`` names top-level entries to leave out."""
    r = os.fsencode(root)
    snap: Snapshot = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for top, dirs, files in os.walk(r):
        names = dirs + files
        if top == r:
            dirs[:] = [d for d in dirs if d not in ignore]
            names = [n for n in names if n not in ignore]
            snap[b"."], _ = _entry(r)
        for name in names:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, r)
            snap[rel], st = _entry(path)
            if snap[rel]["type"] != "dir":
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for names in inodes.values():
        if len(names) > 1:
            for name in names:
                snap[name]["links"] = tuple(sorted(names))
    return snap


def show(path: bytes) -> str:
    """A path for messages: plain if it is valid UTF-8 and printable, else its repr."""
    try:
        text = path.decode()
    except UnicodeDecodeError:
        return repr(path)
    return text if text.isprintable() else repr(path)


def diff(a: Snapshot, b: Snapshot) -> list[str]:
    """What differs from snapshot ``a`` to ``b``, one line per attribute; ``[]`` when equal."""
    out = [f"missing: {show(p)}" for p in sorted(a.keys() - b.keys())]
    out += [f"extra: {show(p)}" for p in sorted(b.keys() - a.keys())]
    for path in sorted(a.keys() & b.keys()):
        ea, eb = a[path], b[path]
        for key in sorted(ea.keys() | eb.keys()):
            va, vb = ea.get(key), eb.get(key)
            if key == "xattrs" and va is not None and vb is not None:
                for n in sorted(va.keys() | vb.keys()):
                    if va.get(n) != vb.get(n):
                        out.append(f"{show(path)}: xattr {n} {va.get(n)!r} != {vb.get(n)!r}")
            elif va != vb:
                fa, fb = (oct(va), oct(vb)) if key == "mode" and va and vb else (repr(va), repr(vb))
                out.append(f"{show(path)}: {key} {fa} != {fb}")
    return out
