"""A tree that changes while it is backed up: files growing, shrinking (also under tar, while it
reads them), removed, replaced by a directory. The backup names each one in its report and
manifest, is committed and verifies; no file is silently short."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from backup import archive, create, restore
from backup.options import BackupOptions
from backup.store import Store
from backup.summary import committed_lines


def _tar_reading(pipe: archive.Pipeline, path: Path, timeout: float = 30) -> int:
    """tar's pid once it holds ``path`` open and has read part of it, but not all."""
    end = time.monotonic() + timeout
    real, size = str(path), path.stat().st_size
    while time.monotonic() < end:
        tar = pipe.tar
        if tar is not None:
            try:
                for fd in os.listdir(f"/proc/{tar.pid}/fd"):
                    if os.readlink(f"/proc/{tar.pid}/fd/{fd}") == real:
                        with open(f"/proc/{tar.pid}/fdinfo/{fd}", encoding="ascii") as fh:
                            pos = int(fh.readline().split()[1])
                        if 0 < pos < size:
                            return tar.pid
            except (OSError, ValueError, IndexError):
                pass
    raise AssertionError(f"tar never read {path} part way")


def test_files_changing_while_read_are_named_and_the_backup_verifies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, target = tmp_path / "src", tmp_path / "target"
    (src / "etc").mkdir(parents=True)
    target.mkdir()
    for name in ("grows", "shrinks", "removed", "becomes-dir", "same"):
        (src / "etc" / name).write_bytes(name.encode() * 1000)
    big = src / "big.bin"  # 32 MiB or more: a segment of its own
    with open(big, "wb") as fh:
        fh.write(os.urandom(40 << 20))
    run = archive.Pipeline.run
    cut_at: list[int] = []

    def changing_run(self: archive.Pipeline, fd: int) -> list[str]:
        if b"big.bin" in self.names:  # shrink it under tar, half way through reading it
            def shrink() -> None:
                pid = _tar_reading(self, big)
                os.kill(pid, signal.SIGSTOP)
                try:
                    cut_at.append(1 << 20)
                    os.truncate(big, 1 << 20)
                finally:
                    os.kill(pid, signal.SIGCONT)
            t = threading.Thread(target=shrink)
            t.start()
            try:
                return run(self, fd)
            finally:
                t.join()
        if b"etc/grows" in self.names:  # walked, not yet read: the tree changes between them
            (src / "etc" / "grows").write_bytes(b"grown" * 5000)
            os.truncate(src / "etc" / "shrinks", 10)
            (src / "etc" / "removed").unlink()
            (src / "etc" / "becomes-dir").unlink()
            (src / "etc" / "becomes-dir").mkdir()
        return run(self, fd)

    monkeypatch.setattr(archive.Pipeline, "run", changing_run)
    # zstd -19: tar is held back by the pipe, so it is caught part way through big.bin.
    out = create.create(str(src), target, BackupOptions(compression_level=19, jobs=2),
                        stream=io.StringIO(), say=lambda _: None)
    assert cut_at == [1 << 20]
    how = {c["path"]: c["how"] for c in out.manifest["changed"]}
    assert how == {
        "/etc/grows": "grew from 5000 to 25000 bytes while read",
        "/etc/shrinks": "shrank from 7000 to 10 bytes while read",
        "/etc/removed": "removed while read (not in the archive)",
        "/etc/becomes-dir": "replaced by a directory while read",
        "/big.bin": f"shrank from {40 << 20} to {1 << 20} bytes while read; tar padded it "
                    "with zeros to its old size",
    }
    assert out.manifest["totals"]["changed"] == 5
    report = "\n".join(committed_lines(out, target, 7))
    assert "5 files changed while being read" in report
    assert "  /big.bin: shrank from 41943040 to 1048576 bytes while read; tar padded" in report
    assert "  /etc/becomes-dir: replaced by a directory while read" in report

    gen = Store(target).find(None)
    assert gen.verified(gen.manifest())  # committed as verified
    checked = restore.verify(gen)
    assert checked.ok, checked.problems
    # What was archived is what tar read: the grown file whole, the shrunk one as it was then.
    listing = subprocess.run(
        ["sh", "-c", "for f in \"$1\"/segments/*.tar.zst; do zstd -dcq \"$f\" | tar -tvf -; "
         "done", "sh", str(gen.path)], capture_output=True, text=True, timeout=60, check=True)
    lines = {ln.split()[-1].rstrip("/"): ln for ln in listing.stdout.splitlines()}
    assert " 25000 " in lines["etc/grows"] and " 10 " in lines["etc/shrinks"]
    assert "etc/removed" not in lines and "etc/same" in lines
    assert lines["etc/becomes-dir"].startswith("d")
    shutil.rmtree(src)
