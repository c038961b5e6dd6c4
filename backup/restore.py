"""Reading generations back: ``backup verify`` and ``backup restore-file``."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backup import archive, index
from backup.archive import ArchiveError
from backup.store import Generation, StoreError


@dataclass
class VerifyReport:
    generation: str
    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sums(gen: Generation) -> dict[str, str]:
    try:
        text = (gen.path / "SHA256SUMS").read_text(encoding="utf-8")
    except OSError as e:
        raise StoreError(f"generation {gen.id}: SHA256SUMS unreadable: {e.strerror}") from None
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name:
            sums[name] = digest
    return sums


def _holds(gen: Generation, seg: dict[str, Any]) -> str:
    """What a segment holds, for naming the damage: its first and last path."""
    try:
        paths = [r.path for r in index.read(str(gen.path / "segments" /
                                                  f"{seg['name']}.idx.gz"))]
    except (OSError, ValueError, EOFError):
        return f"{seg.get('entries', '?')} entries (its index is unreadable too)"
    if not paths:
        return "nothing"
    return f"{len(paths)} entries, {paths[0]} … {paths[-1]}"


def verify(gen: Generation, live: str | None = None) -> VerifyReport:
    """Re-read every file of the generation against SHA256SUMS and the manifest; with ``live``
    (the source root) also compare the archives with the live files (tar --compare)."""
    report = VerifyReport(gen.id)
    manifest = gen.manifest()
    sums = _sums(gen)
    listed = {f"segments/{s['name']}.tar.zst": s for s in manifest["segments"]}
    for name in sorted(set(sums) | set(listed)):
        seg = listed.get(name)
        if name not in sums:
            report.problems.append(f"{name}: missing from SHA256SUMS")
            continue
        if seg is not None and seg["sha256"] != sums[name]:
            report.problems.append(f"{name}: manifest and SHA256SUMS disagree")
        try:
            digest, size = archive.hash_file(str(gen.path / name))
        except ArchiveError as e:
            report.problems.append(f"{name}: unreadable: {e}")
            continue
        report.checked += 1
        report.bytes += size
        if digest != sums[name]:
            what = f"; it holds {_holds(gen, seg)}" if seg is not None else ""
            report.problems.append(f"{name}: damaged (sha256 differs){what}")
    if live is not None and report.ok:
        for seg in manifest["segments"]:
            fs = manifest["filesystems"][seg["fs"]]
            root = os.path.join(live, fs["prefix"]) if fs["prefix"] else live
            lines = archive.compare(str(gen.path / "segments" / f"{seg['name']}.tar.zst"),
                                    root)
            prefix = f"/{fs['prefix']}/" if fs["prefix"] else "/"
            for line in lines:  # "etc/x: Contents differ", "tar: etc/y: Warning: Cannot stat"
                text = (line[5:] if line.startswith("tar: ") else line).strip()
                if text and not text.startswith("Exiting with failure"):
                    report.differences.append(prefix + text)
    gen.record_verify({"ok": report.ok, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime()),
                       "checked": report.checked, "bytes": report.bytes,
                       "problems": report.problems})
    return report


def _normal(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"{path}: '..' is not allowed in a path to restore")
    return "/" + "/".join(parts)


@dataclass
class Selection:
    members: dict[str, list[bytes] | None]  # segment name -> members (None: all of it)
    entries: int = 0
    added_links: list[str] = field(default_factory=list)


def select(gen: Generation, manifest: dict[str, Any], paths: Iterable[str]) -> Selection:
    wanted = [_normal(p) for p in paths]
    if "/" in wanted:
        sel = Selection({s["name"]: None for s in manifest["segments"]})
        sel.entries = sum(s["entries"] for s in manifest["segments"])
        return sel
    found: dict[str, list[bytes]] = defaultdict(list)
    hit = dict.fromkeys(wanted, False)
    chosen: set[str] = set()
    links: list[tuple[dict[str, Any], index.Record]] = []
    where: dict[str, dict[str, Any]] = {}
    for seg in manifest["segments"]:
        prefix = manifest["filesystems"][seg["fs"]]["prefix"]
        for rec in index.read(str(gen.path / "segments" / f"{seg['name']}.idx.gz")):
            where.setdefault(rec.path, seg)
            for w in wanted:
                if rec.path == w or rec.path.startswith(w + "/"):
                    hit[w] = True
                    found[seg["name"]].append(index.member(prefix, rec.path))
                    chosen.add(rec.path)
                    if rec.type == "h":
                        links.append((seg, rec))
                    break
    missing = [w for w, ok in hit.items() if not ok]
    if missing:
        raise StoreError(f"not in generation {gen.id}: {', '.join(missing)}")
    sel = Selection({})
    for seg, rec in links:  # tar can only make a hard link to a name it extracts too
        if rec.target not in chosen:
            prefix = manifest["filesystems"][seg["fs"]]["prefix"]
            found[seg["name"]].insert(0, index.member(prefix, rec.target))
            chosen.add(rec.target)
            sel.added_links.append(rec.target)
    sel.members = dict(found)
    sel.entries = sum(len(v) for v in found.values())
    return sel


def restore(gen: Generation, paths: Iterable[str], dest: Path,
            say: Callable[[str], None] = print) -> Selection:
    """Extract ``paths`` (or "/" for everything) of ``gen`` under ``dest``; the archives
    involved are checked against their sha256 before anything is written."""
    manifest = gen.manifest()
    sel = select(gen, manifest, paths)
    segs = {s["name"]: s for s in manifest["segments"]}
    for name in sel.members:
        digest, _ = archive.hash_file(str(gen.path / "segments" / f"{name}.tar.zst"))
        if digest != segs[name]["sha256"]:
            raise ArchiveError(f"segments/{name}.tar.zst is damaged (sha256 differs); nothing "
                               "was restored")
    dest.mkdir(parents=True, exist_ok=True)
    # Directories first (they exist with their owners and modes before files go in), files,
    # then the directories again: creating an empty directory or a file changes its parent's
    # time, so times are set only when nothing is created any more. Outer filesystems first.
    dirs = sorted((n for n in sel.members if segs[n]["kind"] == "dirs"), key=lambda n: (
        manifest["filesystems"][segs[n]["fs"]]["prefix"].count("/"), n))
    data = sorted(n for n in sel.members if segs[n]["kind"] != "dirs")
    for name in [*dirs, *data, *dirs]:
        prefix = manifest["filesystems"][segs[name]["fs"]]["prefix"]
        where = dest / prefix if prefix else dest
        where.mkdir(parents=True, exist_ok=True)
        for line in archive.extract(str(gen.path / "segments" / f"{name}.tar.zst"),
                                    str(where), sel.members[name]):
            say(line)
    return sel
