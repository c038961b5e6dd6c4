"""Segments are extracted several at once: what one segment's members need from another's —
a hard link to a file of an earlier segment, a hard link to a symlink of a later one — is
made after every segment is written, in the order that works, whichever segment finished
first (steward keeps a hard-linked inode in one segment; another writer of the drive need
not). The hostile cases across segments are tests/backup/test_hostile.py."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from tests.backup.conftest import backup, generations
from tests.backup.hostile import forge


def _tar(*members: tuple[str, bytes | None, str]) -> bytes:
    """(name, content, "") files, (name, None, "->target") symlinks, (name, None, "=first")
    hard links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = 1_700_000_000, 0o644
            if link.startswith("->"):
                info.type, info.linkname = tarfile.SYMTYPE, link[2:]
            elif link.startswith("="):
                info.type, info.linkname = tarfile.LNKTYPE, link[1:]
            else:
                info.size = len(data or b"")
            t.addfile(info, io.BytesIO(data or b""))
    return out.getvalue()


def test_links_between_segments_extracted_at_the_same_time(tmp_path: Path,
                                                           target: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/placeholder").write_text("x\n")
    r = backup("create", "--source", str(src), "--target", str(target))
    assert r.returncode == 0, r.stderr
    gen = target / str(generations(target)[-1]["id"])
    big = os.urandom(4 << 20)  # a segment that takes a while: the others finish before it
    forge(gen, [
        ("data", _tar(("etc/shared", big, ""), *((f"etc/f{n}", b"%d\n" % n, "")
                                                    for n in range(50)))),
        ("data", _tar(("etc/alias", None, "=etc/shared"))),  # a hard link to segment 0000
        ("data", _tar(("etc/hl-to-sym", None, "=etc/sym"))),  # to a symlink of 0003
        ("data", _tar(("etc/sym", None, "->shared"))),
        ("dirs", tar_dirs()),
    ])
    to = tmp_path / "to"
    r = backup("restore-file", gen.name, "/", "--to", str(to), "--target", str(target))
    assert r.returncode == 0, r.stdout + r.stderr
    shared, alias = os.lstat(to / "etc/shared"), os.lstat(to / "etc/alias")
    assert (shared.st_ino, shared.st_nlink) == (alias.st_ino, 2)
    assert (to / "etc/alias").read_bytes() == big
    assert os.readlink(to / "etc/sym") == "shared"
    assert os.lstat(to / "etc/hl-to-sym").st_ino == os.lstat(to / "etc/sym").st_ino
    assert sorted(p.name for p in (to / "etc").iterdir()) == sorted(
        ["shared", "alias", "hl-to-sym", "sym", *(f"f{n}" for n in range(50))])


def tar_dirs() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in (".", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            t.addfile(info)
    return out.getvalue()
