"""Segments are extracted several at once: what one segment's members need from another's —
a hard link to a file of an earlier segment, a hard link to a symlink of a later one — is
made after every segment is written, in the order that works, whichever segment finished
first (steward keeps a hard-linked inode in one segment; another writer of the drive need
not). The hostile cases across segments are tests/backup/test_hostile.py."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from backup import jail, restore
from backup.store import Store
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


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_hashing_while_extracting_names_every_damaged_archive_and_takes_its_files_back(
        tmp_path: Path, target: Path) -> None:
    """The bare-metal restore's single pass (``hash_first=False``): every segment is read
    once, hashed on its way into zstd. Two damaged ones of four, extracted several at once: both
    named, the files written from them removed, the intact ones' files kept, and nothing of
    what comes after the files (held links, directory times) done."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/placeholder").write_text("x\n")
    assert backup("create", "--source", str(src), "--target", str(target)).returncode == 0
    gen = target / str(generations(target)[-1]["id"])
    noise = [os.urandom(1 << 20) for _ in range(3)]  # zstd cannot shrink it: the flip is data
    forge(gen, [
        ("data", _tar(*((f"etc/a{n}", noise[0][n::8], "") for n in range(8)))),
        ("data", _tar(*((f"etc/b{n}", noise[1][n::8], "") for n in range(8)))),
        ("data", _tar(("etc/c", noise[2], ""), ("etc/to-a0", None, "=etc/a0"))),
        ("data", _tar(("etc/sym", None, "->c"))),
        ("dirs", tar_dirs()),
    ])
    store = Store(target)
    g = store.find(gen.name)
    to = tmp_path / "single"
    assert restore.restore(g, ["/"], to, say=lambda _: None, hash_first=False).entries == 21
    assert (to / "etc/a3").read_bytes() == noise[0][3::8] and os.readlink(to / "etc/sym") == "c"
    _flip(gen / "segments/0000.tar.zst")
    _flip(gen / "segments/0002.tar.zst")
    to = tmp_path / "damaged"
    with pytest.raises(jail.Mismatch) as failed:
        restore.restore(g, ["/"], to, say=lambda _: None, hash_first=False)
    why = str(failed.value)
    # zstd stops at the damage: what it had given tar before (a count > 0) is taken back
    assert re.fullmatch(r"segments/0000.tar.zst is damaged \(sha256 differs; it holds 8 "
                        r"entries, /etc/a0 … /etc/a7\), found while it was extracted: the "
                        r"[1-8] files written from it were removed again; segments/0002.tar.zst "
                        r"is damaged \(sha256 differs; it holds 2 entries, /etc/c … "
                        r"/etc/to-a0\), found while it was extracted: the [01] files written "
                        r"from it were removed again", why), why
    assert sorted(p.name for p in (to / "etc").iterdir()) == [f"b{n}" for n in range(8)]
    assert (to / "etc/b5").read_bytes() == noise[1][5::8]
    # restore-file hashes first: nothing is written
    r = backup("restore-file", gen.name, "/", "--to", str(tmp_path / "file"), "--target",
               str(target))
    assert r.returncode == 1 and "segments/0000.tar.zst is damaged" in r.stderr, r.stderr
    assert not (tmp_path / "file/etc").exists()
