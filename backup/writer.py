"""The archives of a backup: the Plan the walk fills, and the Writer that compresses each
segment into ``partial`` (tar | zstd), fsyncs it and reads it back from the device, or links
it from a verified generation when nothing in it changed."""

from __future__ import annotations

import heapq
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup import index
from backup.archive import ArchiveError, Pipeline, create_file, read_back, target_error
from backup.changed import changed
from backup.mounts import Filesystem
from backup.plan import Segment
from backup.store import Generation
from backup.walk import Walked


@dataclass
class Plan:
    """What is being archived; segments are added while the walk goes on."""

    filesystems: list[Filesystem]
    walked: list[Walked] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    reused: dict[int, tuple[Generation, dict[str, Any]]] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return sum(len(s.members) for s in self.segments)

    def totals(self) -> tuple[int, int]:
        """Bytes and entries planned so far (for progress)."""
        segs = list(self.segments)
        return sum(s.size for s in segs), sum(len(s.members) for s in segs)

    def new(self) -> list[int]:
        return [i for i in range(len(self.segments)) if i not in self.reused]


class Writer:
    """Writes segments into ``partial`` as the walk hands them over, the longest waiting one
    first, ``jobs`` compressing at a time; a segment already in a verified generation is
    linked.

    One worker more than ``jobs`` runs: while an archive is fsynced and read back (device
    time) another is compressed. A compression slot is held for tar | zstd only, so there are
    never more compressors than ``jobs``: a third zstd time-sliced on two CPUs costs ~20 %
    more CPU time per byte (caches refilled at every switch)."""

    def __init__(self, plan: Plan, partial: Path, level: int, jobs: int,
                 known: dict[str, tuple[Generation, dict[str, Any]]]) -> None:
        self.plan, self.partial, self.level, self.jobs = plan, partial, level, jobs
        self.known = known
        self._slots = threading.BoundedSemaphore(jobs)
        self.done_bytes = self.done_files = 0
        self.running: dict[int, Pipeline] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.keys: dict[int, str] = {}  # each final segment's key, taken once
        self.warnings: list[str] = []
        self.changed: list[tuple[str, str]] = []  # (path from the source root, how)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[tuple[int, int]] = []  # heap of (-cost, index)
        self._closed = False
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    def sample(self) -> tuple[int, int]:
        with self._lock:
            done_b, done_f = self.done_bytes, self.done_files
            for i, p in list(self.running.items()):
                seg = self.plan.segments[i]
                part = min(p.read_bytes(), seg.size)
                done_b += part
                done_f += len(seg.members) * part // seg.size if seg.size else 0
        return done_b, done_f

    def start(self) -> None:
        (self.partial / "segments").mkdir()
        self._threads = [threading.Thread(target=self._work, name=f"segment-{n}", daemon=True)
                         for n in range(self.jobs + 1)]
        for t in self._threads:
            t.start()

    def add(self, i: int) -> None:
        """Segment ``i`` is final: link it from an earlier generation or queue it."""
        seg = self.plan.segments[i]
        key = self.keys[i] = seg.key()
        hit = self.known.get(key)
        with self._wake:
            if self._error is not None:
                raise self._error  # stops the walk: the backup has failed
            if hit is None:
                heapq.heappush(self._queue, (-seg.cost(), i))
                self._wake.notify()
                return
        self.plan.reused[i] = hit
        self._link(i)

    def pending_bytes(self) -> int:
        """Raw bytes (plus per-entry overhead) of the segments not written yet."""
        with self._lock:
            todo = [i for _, i in self._queue] + list(self.running)
        return sum(self.plan.segments[i].size + 1024 * len(self.plan.segments[i].members)
                   for i in todo)

    def finish(self) -> None:
        """No more segments: wait for the last ones; the first failure is raised."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        with self._wake:
            if self._error is None:
                self._error = ArchiveError("cancelled")
            self._fail()
        for t in self._threads:
            t.join()

    def _fail(self) -> None:  # holding the lock
        self._queue.clear()
        for p in self.running.values():
            p.cancel()
        self._wake.notify_all()

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closed and self._error is None:
                    self._wake.wait()
                if self._error is not None or not self._queue:
                    return
                _, i = heapq.heappop(self._queue)
            try:
                self._one(i)
            except BaseException as e:  # handed to the walking thread
                with self._wake:
                    if self._error is None:
                        self._error = e
                    self._fail()
                return

    def _one(self, i: int) -> None:
        seg = self.plan.segments[i]
        fs = self.plan.filesystems[seg.fs]
        name = f"{i:04d}"
        path = str(self.partial / "segments" / f"{name}.tar.zst")
        # Several archives at once: one zstd thread each (zstd's own threads cost ~8 % more CPU).
        pipe = Pipeline(fs.read_root, [e.name for e in seg.members], path, self.level,
                        1 if self.jobs > 1 else 0)
        with self._lock:
            if self._error is not None:
                return
            self.running[i] = pipe
        fd = -1
        try:
            fd = create_file(path)
            with self._slots:
                warnings = pipe.run(fd)
            moved = changed(fs.read_root, seg.members, warnings)
            sha256, stored = read_back(path, fd)
            try:
                index.write(str(self.partial / "segments" / f"{name}.idx.gz"),
                            os.fsencode(fs.prefix), seg, os.fsencode(fs.read_root))
            except OSError as e:
                raise target_error(path, e) from None
        finally:
            if fd >= 0:
                os.close(fd)
            with self._lock:
                self.running.pop(i, None)
        with self._lock:
            self.done_bytes += seg.size
            self.done_files += len(seg.members)
            self.warnings.extend(f"{fs.prefix or '/'}: {w}" for w in warnings)
            prefix = os.fsencode(fs.prefix)
            self.changed.extend((index.logical(prefix, n), how) for n, how in moved)
            self.results[i] = {"sha256": sha256, "stored": stored, "reused": None}

    def _link(self, i: int) -> None:
        gen, old = self.plan.reused[i]
        new = self.partial / "segments"
        for ext in (".tar.zst", ".idx.gz"):
            src = gen.path / "segments" / f"{old['name']}{ext}"
            try:
                os.link(src, new / f"{i:04d}{ext}")
            except OSError as e:
                raise target_error(str(src), e) from None
        seg = self.plan.segments[i]
        with self._lock:
            self.done_bytes += seg.size
            self.done_files += len(seg.members)
            self.results[i] = {"sha256": old["sha256"], "stored": old["stored"],
                               "reused": gen.id}
