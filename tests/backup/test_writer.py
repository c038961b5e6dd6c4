"""How segments are scheduled: never more compressors than ``jobs``, one more archive read
back meanwhile, the longest segment first."""

from __future__ import annotations

import gc
import io
import os
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from backup import archive, create, writer
from backup.options import BackupOptions
from backup.plan import ENTRY_COST, Segment
from backup.walk import Entry


def test_compressors_never_exceed_jobs_while_another_archive_is_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "src", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    for n in range(5):  # 32 MiB or more: a segment each
        (source / f"big{n}").write_bytes(b"steward " * (4 << 20) + bytes([n]))
    lock = threading.Lock()
    active, peak, seen_by_read_back = [0], [0], []
    run, read_back = archive.Pipeline.run, writer.read_back

    def counted_run(self: archive.Pipeline, fd: int) -> list[str]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.3)  # every compression overlaps the others
            return run(self, fd)
        finally:
            with lock:
                active[0] -= 1

    def watched_read_back(path: str, fd: int) -> tuple[str, int]:
        deadline = time.monotonic() + 3  # the next compression takes the freed slot (a
        while time.monotonic() < deadline:  # loaded machine may take a while to start it)
            with lock:
                if active[0] >= 2:
                    break
            time.sleep(0.01)
        with lock:
            seen_by_read_back.append(active[0])
        return read_back(path, fd)

    monkeypatch.setattr(archive.Pipeline, "run", counted_run)
    monkeypatch.setattr(writer, "read_back", watched_read_back)
    out = create.create(str(source), target, BackupOptions(jobs=2), stream=io.StringIO(),
                        say=lambda _: None)
    assert out.manifest["totals"]["written"] > 0
    assert len(out.manifest["segments"]) == 6  # five files, one of directories
    assert peak[0] == 2
    assert max(seen_by_read_back) == 2  # read back while both slots compress


def _entries(n: int, size: int, mode: int = stat.S_IFREG | 0o644) -> list[Entry]:
    st = os.stat_result((mode, 1, 1, 1, 0, 0, size, 0, 0, 0))
    return [Entry(f"e{i}".encode(), st) for i in range(n)]


def test_a_segment_of_many_directories_is_not_left_for_last() -> None:
    """tar spends ~20 µs on every entry: 11,000 directories take longer than 48 MB of
    data in 100 files, so they are archived first."""
    dirs = Segment(0, "dirs", _entries(11_000, 0, stat.S_IFDIR | 0o755), size=0)
    data = Segment(0, "data", _entries(100, 480_000), size=48_000_000)
    assert dirs.cost() == 11_000 * ENTRY_COST > data.cost() == 48_000_000 + 100 * ENTRY_COST


def test_the_walk_is_given_back_when_the_backup_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create pauses Python's cycle collector (the walk holds two objects per file, none in
    a cycle): so nothing may keep the plan alive in a cycle, or it would stay until the
    collector runs again (in the daemon: a whole system's walk)."""
    source, target = tmp_path / "src", tmp_path / "target"
    (source / "d").mkdir(parents=True)
    target.mkdir()
    for n in range(50):
        (source / "d" / f"f{n}").write_text(f"{n}\n")
    os.link(source / "d" / "f0", source / "d" / "again")  # a segment held to the end too
    plans: list[weakref.ref[writer.Plan]] = []
    make_plan = create.make_plan

    def kept(*args: Any, **kwargs: Any) -> writer.Plan:
        plan = make_plan(*args, **kwargs)
        plans.append(weakref.ref(plan))
        return plan

    monkeypatch.setattr(create, "make_plan", kept)
    was = gc.isenabled()
    gc.disable()
    try:
        create.create(str(source), target, BackupOptions(), stream=io.StringIO(),
                      say=lambda _: None)
        assert plans and plans[0]() is None
        assert not gc.isenabled()  # the caller's setting is given back
    finally:
        if was:
            gc.enable()
