"""``steward backup create``: hooks, (snapshots,) walk, segments, write + read back, commit,
retention. Nothing is committed unless every archive was written, fsynced, read back from the
target and found to be the bytes written."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.system.clock import Clock
from backup import hooks, index, layout, snapshot
from backup.archive import (
    ArchiveError,
    hash_file,
    target_error,
)
from backup.mounts import Filesystem, SourceLayout, read_mounts, source_layout
from backup.options import BackupOptions
from backup.plan import Cutter, Segment
from backup.progress import Progress, human
from backup.store import Generation, Store, StoreError
from backup.walk import Excludes, Walked, walk
from backup.writer import Plan, Writer

MARGIN = 16 << 20  # free space kept beyond the estimate
CLOCK = Clock()  # the generation's times (its id, created, finished); tests replace it


class BackupError(Exception):
    """The backup failed; nothing was committed. The message says why."""


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _skip_inodes(target: Path) -> frozenset[tuple[int, int]]:
    """The target and active swap files are never archived."""
    skip = set()
    st = os.stat(target)
    skip.add((st.st_dev, st.st_ino))
    try:
        with open("/proc/swaps", encoding="utf-8") as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "file":
                    sw = os.stat(fields[0])
                    skip.add((sw.st_dev, sw.st_ino))
    except OSError:
        pass
    return frozenset(skip)


def filesystems_of(source: str) -> SourceLayout:
    mounts = source_layout(source, read_mounts())
    if not mounts.filesystems:
        raise BackupError(f"{source} is not on a local filesystem (nothing to back up)")
    return mounts


def make_plan(mounts: SourceLayout, target: Path, opts: BackupOptions,
              filesystems: Sequence[Filesystem], *, emit: Callable[[int], None] | None = None,
              plan: Plan | None = None) -> Plan:
    """Walk ``filesystems`` (those of ``mounts``, read from a snapshot where one was taken)
    into ``plan``, cutting segments as it goes; ``emit`` gets each final segment's index."""
    plan = plan if plan is not None else Plan(list(filesystems))
    patterns = list(opts.exclude)
    inside = os.path.relpath(os.path.realpath(target), mounts.source)
    if not inside.startswith(".."):  # also when read from a snapshot, where inodes differ
        patterns.append(glob.escape("/" + inside))
    excludes = Excludes(patterns)
    skip = _skip_inodes(target)

    def add(seg: Segment) -> None:
        plan.segments.append(seg)
        if emit is not None:
            emit(len(plan.segments) - 1)

    for i, fs in enumerate(plan.filesystems):
        if fs.prefix and excludes(b"/" + os.fsencode(fs.prefix)):
            plan.walked.append(Walked([], []))
            continue
        cutter = Cutter(i, add)
        w = walk(fs, mounts, excludes, skip, on_file=cutter.file)
        cutter.finish(w.dirs)
        plan.walked.append(w)
    return plan


def known_segments(store: Store) -> dict[str, tuple[Generation, dict[str, Any]]]:
    """Segments of verified generations by key: reused (hard-linked), not rewritten."""
    known: dict[str, tuple[Generation, dict[str, Any]]] = {}
    for gen in store.generations():
        try:
            manifest = gen.manifest()
        except StoreError:
            continue
        if not gen.verified(manifest):
            continue
        for seg in manifest.get("segments", []):
            known[seg["key"]] = (gen, seg)
    return known


def _ratio(store: Store) -> float:
    """Stored / raw bytes of the last generation (1 without one): what new data will take."""
    gens = store.generations()
    if gens:
        try:
            totals = gens[-1].manifest().get("totals", {})
            if totals.get("bytes"):
                return float(min(1.0, max(0.05, totals["stored"] / totals["bytes"])))
        except StoreError:
            pass
    return 1.0


@dataclass(frozen=True)
class Outcome:
    generation: Generation
    manifest: dict[str, Any]
    removed_partial: list[str]
    dropped: list[str]
    hook_failures: list[str]


def create(source: str, target: Path, opts: BackupOptions, *, stream: TextIO = sys.stderr,
           say: Callable[[str], None] = print, jobs: int | None = None) -> Outcome:
    store = Store(target)
    try:
        with store.locked():
            removed = store.clean_partial()
            for name in removed:
                say(f"removed {name}, left by an interrupted backup")
            hook = hooks.Hooks(opts, say)
            try:
                hook.pre()
                outcome = _create_locked(source, store, opts, stream=stream, say=say, jobs=jobs,
                                         removed=removed)
            finally:
                failures = hook.post()
                for text in failures:
                    say(text)
            return dataclasses.replace(outcome, hook_failures=failures)
    except (StoreError, ArchiveError, hooks.HookError) as e:
        raise BackupError(str(e)) from None
    except OSError as e:
        raise BackupError(str(target_error(str(target), e))) from None


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The plan holds two objects per file (its entry and stat), none in a reference cycle;
    with Python's cycle collector on, each of its full passes walks them all again: ~20 % of
    the walk's CPU time on 100,000 files (process_time, medians of 8)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _create_locked(source: str, store: Store, opts: BackupOptions, *, stream: TextIO,
                   say: Callable[[str], None], jobs: int | None,
                   removed: list[str]) -> Outcome:
    t0 = CLOCK.now()
    captured: dict[str, Any] = {}
    capture = threading.Thread(target=lambda: captured.update(layout.capture()), daemon=True)
    capture.start()  # its commands run while the tree is walked
    mounts = filesystems_of(source)
    with _collector_paused(), snapshot.taken(mounts.filesystems, opts, say) as filesystems:
        return _write(source, store, opts, mounts, filesystems, t0=t0, stream=stream,
                      jobs=jobs, removed=removed, layout_thread=(capture, captured))


def _write(source: str, store: Store, opts: BackupOptions, mounts: SourceLayout,
           filesystems: Sequence[Filesystem], *, t0: float, stream: TextIO, jobs: int | None,
           removed: list[str], layout_thread: tuple[threading.Thread, dict[str, Any]]
           ) -> Outcome:
    """Walk and write at once: each segment is archived as soon as the walk has cut it."""
    capture, captured = layout_thread
    known, ratio = known_segments(store), _ratio(store)
    gen_id = store.new_id(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t0)))
    partial = store.target / f".partial-{gen_id}"
    partial.mkdir(mode=0o700)
    workers = jobs or opts.jobs or os.cpu_count() or 1
    plan = Plan(list(filesystems))
    writer = Writer(plan, partial, opts.compression_level, workers, known)
    try:
        with Progress("backup", 0, 0, writer.sample, stream, totals=plan.totals):
            writer.start()
            try:
                make_plan(mounts, store.target, opts, filesystems, emit=writer.add, plan=plan)
                _check_space(store, writer, ratio)
            except BaseException:
                writer.abort()
                raise
            writer.finish()
        capture.join()
        manifest = _manifest(gen_id, source, opts, plan, writer=writer, t0=t0)
        _write_json(partial / "layout.json", captured)
        _write_json(partial / "manifest.json", manifest)
        _write_sums(partial, plan, writer)
        gen = store.commit(partial, gen_id)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # else the next run removes it
        raise
    dropped = store.retain(opts.keep)
    return Outcome(gen, manifest, removed, dropped, [])


def _check_space(store: Store, writer: Writer, ratio: float) -> None:
    """Once the walk is over: is there room for what is still to be written?"""
    need = int(writer.pending_bytes() * ratio) + MARGIN
    vfs = os.statvfs(store.target)
    free = vfs.f_bavail * vfs.f_frsize
    if free < need:
        raise BackupError(f"backup target {store.target} has {human(free)} free; this backup "
                          f"needs about {human(need)} more: free space there or lower [backup] "
                          "keep")


def _manifest(gen_id: str, source: str, opts: BackupOptions, plan: Plan, *, writer: Writer,
              t0: float) -> dict[str, Any]:
    segs = []
    for i, seg in enumerate(plan.segments):
        r = writer.results[i]
        segs.append({"name": f"{i:04d}", "fs": seg.fs, "kind": seg.kind, "key": writer.keys[i],
                     "entries": len(seg.members), "bytes": seg.size, **r})
    stored = sum(s["stored"] for s in segs)
    now = CLOCK.now()
    return {
        "format": 1, "id": gen_id, "created": _utc(t0), "finished": _utc(now),
        "seconds": round(now - t0, 3), "host": socket.gethostname(), "source": source,
        "exclude": list(opts.exclude), "compression": {"tool": "zstd",
                                                       "level": opts.compression_level},
        "filesystems": [{"prefix": fs.prefix, "mountpoint": fs.mount.target,
                         "device": fs.mount.source, "fstype": fs.mount.fstype,
                         "read_from": fs.read_root} for fs in plan.filesystems],
        "segments": segs,
        "totals": {"entries": plan.entries,
                   "files": sum(w.nfiles for w in plan.walked),
                   "dirs": sum(len(w.dirs) for w in plan.walked),
                   "excluded": sum(w.excluded for w in plan.walked),
                   "sockets_skipped": sum(w.skipped_sockets for w in plan.walked),
                   "bytes": sum(s["bytes"] for s in segs), "stored": stored,
                   "written": sum(s["stored"] for s in segs if not s["reused"]),
                   "reused_segments": len(plan.reused),
                   "changed": len(writer.changed)},
        "warnings": writer.warnings[:200],
        # Files that changed while read: archived as tar read them, not as the index says.
        "changed": [{"path": p, "how": how} for p, how in sorted(writer.changed)[:1000]],
        "verified": {"at": _utc(now), "how": "new archives fsynced, read back from the target "
                     "past the page cache and compared with the bytes written (decompressed "
                     "and checked against zstd's checksums where those had left memory); "
                     "reused ones are hard links to verified ones"},
    }


def _write_json(path: Path, data: Any) -> None:
    with open(path, "x", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_sums(partial: Path, plan: Plan, writer: Writer) -> None:
    """SHA256SUMS in ``sha256sum -c`` format, over everything in the generation."""
    lines = []
    for i in range(len(plan.segments)):
        lines.append(f"{writer.results[i]['sha256']}  segments/{i:04d}.tar.zst")
    for i in range(len(plan.segments)):
        lines.append(f"{hash_file(str(partial / 'segments' / f'{i:04d}.idx.gz'))[0]}  "
                     f"segments/{i:04d}.idx.gz")
    for name in ("layout.json", "manifest.json"):
        lines.append(f"{hash_file(str(partial / name))[0]}  {name}")
    with open(partial / "SHA256SUMS", "x", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_index(gen: Generation, manifest: dict[str, Any]) -> Iterator[tuple[dict[str, Any],
                                                                           index.Record]]:
    for seg in manifest["segments"]:
        for rec in index.read(str(gen.path / "segments" / f"{seg['name']}.idx.gz")):
            yield seg, rec

