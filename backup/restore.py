"""Reading generations back: ``backup verify`` and ``backup restore-file`` (and so the
bare-metal ``steward restore``, which extracts with ``restore`` into the new root).

A drive is untrusted input: whoever can write it can rewrite an archive and recompute every
checksum, so a restore never writes outside its destination whatever a generation holds.
Each segment is its own ``tar --extract``, and tar's guard against following an archive's own
symlinks does not span two runs (segment 0000's ``etc/evil -> /x`` then segment 0002's
``etc/evil/pwned`` wrote /x/pwned). So the decompressed stream passes through
``backup.tarstream`` on its way into tar, and ``backup.jail`` judges each member there:

- names are taken exactly as tar takes them (posix headers only, checksums checked; any
  other header ends the segment), and absolute names and ``..`` are refused;
- symlinks (and hard links to them) are held back and made in one tar run per filesystem
  after every file is in place, before the directories' times are set: while files are
  written no symlink of the generation exists, and a member below one is refused;
- a member whose parent is a symlink already in the destination (a second restore into the
  same folder, or anything put there before) is refused: each directory is looked at once
  with lstat, relative to the destination opened once (nothing followed below it);
- a hard link's target passes the same checks; a filesystem's folder is opened component by
  component with O_NOFOLLOW and tar runs in it by descriptor (``/proc/self/fd/N``);
- device nodes are skipped and named unless asked for (``--devices``; bare metal always);
- the data segments are extracted several at once (``WORKERS``, after the directories):
  nothing they write is a symlink, so what the jail found stays true while the others
  write; the symlinks every segment restores are known from the indexes before the first
  member is judged (so a member below one is refused whichever segment runs first), and a
  hard link to another segment's name is held with the symlinks.

Every refusal is a line naming the member and why; the rest is restored and the restore then
fails (exit 1). The checks cost no process per file and no second read of an archive; tar
keeps its defaults otherwise (``--absolute-names`` is never used; an existing symlink where a
file or directory is extracted is replaced, not followed).
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.system.clock import Clock
from backup import archive, index, jail
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


def verify(gen: Generation, live: str | None = None, clock: Clock | None = None, *,
           archives: bool = True) -> VerifyReport:
    """Re-read every file of the generation against SHA256SUMS and the manifest; with ``live``
    (the source root) also compare the archives with the live files (tar --compare). The
    verification is recorded in the generation, dated by ``clock``. Without ``archives`` the
    segments' archives are only found to be there with the size the backup stored (their
    sha256 is then checked as they are extracted) and nothing is recorded."""
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
        if seg is not None:  # the size first: a short archive is named as such, at once
            try:
                size = os.stat(gen.path / name).st_size
            except OSError as e:
                report.problems.append(f"{name}: unreadable: {e.strerror}")
                continue
            if seg.get("stored", size) != size:
                report.checked += 1
                report.bytes += size
                report.problems.append(f"{name}: damaged ({size} bytes, not the "
                                       f"{seg['stored']} written); it holds {_holds(gen, seg)}")
                continue
            if not archives:
                report.checked += 1
                report.bytes += size
                continue
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
    if not archives:
        return report
    at = (clock or Clock()).now()
    gen.record_verify({"ok": report.ok, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime(at)),
                       "checked": report.checked, "bytes": report.bytes,
                       "problems": report.problems})
    return report


def _normal(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"{path}: '..' is not allowed in a path to restore")
    return "/" + "/".join(parts)


class Damaged(ArchiveError):
    """An index or manifest that cannot be used; nothing was restored."""


@dataclass
class Selection:
    members: dict[str, list[bytes] | None]  # segment name -> members (None: all of it)
    entries: int = 0
    added_links: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # a line per member refused
    refused_count: int = 0
    skipped: list[str] = field(default_factory=list)  # device nodes not made


WORKERS = min(4, os.cpu_count() or 1)  # segments extracted at once (each: zstd, tar, a thread)
_SEGMENT = re.compile(r"^[0-9]{4,6}$")


def check_manifest(gen: Generation, manifest: dict[str, Any]) -> None:
    """What restore takes from the manifest is what a steward manifest holds: segment names
    that stay in segments/, filesystem prefixes that stay beneath the destination."""
    def bad(what: str) -> Damaged:
        return Damaged(f"generation {gen.id}: manifest.json {what}; nothing was restored "
                       "(run `steward backup verify`)")

    fss, segs = manifest.get("filesystems"), manifest.get("segments")
    if not isinstance(fss, list) or not isinstance(segs, list):
        raise bad("has no list of filesystems and segments")
    for fs in fss:
        prefix = fs.get("prefix") if isinstance(fs, dict) else None
        if not isinstance(prefix, str):
            raise bad("has a filesystem without a prefix")
        try:
            jail.parts(os.fsencode(prefix))
        except jail.Refused as e:
            raise bad(f"has the filesystem prefix {jail.shown(os.fsencode(prefix))!r}: "
                      f"{e}") from None
    for seg in segs:
        if not (isinstance(seg, dict) and isinstance(seg.get("name"), str)
                and _SEGMENT.match(seg["name"]) and type(seg.get("fs")) is int
                and 0 <= seg["fs"] < len(fss) and seg.get("kind") in ("data", "dirs")
                and isinstance(seg.get("sha256"), str) and type(seg.get("entries")) is int):
            raise bad(f"has a segment that is not a steward segment: "
                      f"{jail.shown(repr(seg).encode())[:200]}")


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
        try:
            records = index.read(str(gen.path / "segments" / f"{seg['name']}.idx.gz"))
        except index.Damaged as e:
            raise Damaged(f"{e}: run `steward backup verify {gen.id}`; nothing was "
                          "restored") from None
        for rec in records:
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
            say: Callable[[str], None] = print, *, devices: bool = False,
            hash_first: bool = True) -> Selection:
    """Extract ``paths`` (or "/" for everything) of ``gen`` under ``dest``; every member is
    kept beneath ``dest`` (see the module's docstring). Device nodes only with ``devices``.

    The archives involved are checked against their sha256 before anything is written
    (``hash_first``: ``restore-file`` into a live system, where a file tar overwrote from a
    damaged archive cannot be given back), or each one while it is extracted (read once;
    the bare-metal ``steward restore``, whose new filesystems hold nothing to lose): then a
    damaged one is an ArchiveError naming it, raised once every segment has run, the files
    tar wrote from it are removed again and nothing after the files is done (no symlinks,
    no directory times)."""
    manifest = gen.manifest()
    check_manifest(gen, manifest)
    sel = select(gen, manifest, paths)
    segs = {s["name"]: s for s in manifest["segments"]}
    for name in sel.members if hash_first else ():
        digest, _ = archive.hash_file(str(gen.path / "segments" / f"{name}.tar.zst"))
        if digest != segs[name]["sha256"]:
            raise ArchiveError(f"segments/{name}.tar.zst is damaged (sha256 differs); nothing "
                               "was restored")
    sums = {} if hash_first else {n: segs[n]["sha256"] for n in sel.members}
    dest.mkdir(parents=True, exist_ok=True)
    prefixes = [fs["prefix"] for fs in manifest["filesystems"]]
    # Directories first (they exist with their owners and modes before files go in), files,
    # the symlinks held back meanwhile, then the directories again: creating an entry changes
    # its parent's time, so times are set only when nothing is created any more. Outer
    # filesystems first.
    dirs = sorted((n for n in sel.members if segs[n]["kind"] == "dirs"), key=lambda n: (
        prefixes[segs[n]["fs"]].count("/"), n))
    data = sorted(n for n in sel.members if segs[n]["kind"] != "dirs")
    with jail.Jail(dest, devices=devices, mounts=prefixes) as j:
        j.links.update(_symlinks(gen, manifest, sel))
        for name in dirs:
            _took(j, say, _extract(gen, name, prefixes[segs[name]["fs"]], sel.members[name],
                                   j=j, sha256=sums.get(name)))
        # The files: each segment in its own zstd | judge | tar, several at once (a bounded
        # pool). Nothing they write is a symlink (held), so what one judged stays true while
        # the others write; a hard link to another segment's file is held too.
        with ThreadPoolExecutor(max(1, min(WORKERS, len(data)))) as pool:
            futures = [pool.submit(_extract, gen, name, prefixes[segs[name]["fs"]],
                                   sel.members[name], j=j, sha256=sums.get(name))
                       for name in data]
        damaged = [e for e in map(Future.exception, futures) if isinstance(e, jail.Mismatch)]
        if damaged:  # every one named, each one's files taken back (in _extract)
            raise jail.Mismatch(damaged[0].path, "; ".join(str(e) for e in damaged))
        for fut in futures:  # in segment order: the first error, the lines, the held links
            _took(j, say, fut.result())
        for prefix, held in j.held.items():
            if held:  # the symlinks first: a held hard link may name one
                held.sort(key=lambda h: h[0] != "2")
                _in(j, prefix, _make_links(j, prefix, [h for _, h in held]))
        j.links_made()
        j.held.clear()
        for name in dirs:
            _took(j, say, _extract(gen, name, prefixes[segs[name]["fs"]], sel.members[name],
                                   j=j, sha256=sums.get(name)))
        sel.refused, sel.refused_count, sel.skipped = j.refused, j.refused_count, j.skipped
    return sel


def _symlinks(gen: Generation, manifest: dict[str, Any], sel: Selection) -> set[bytes]:
    """The symlinks the selection restores (and hard links to them), from the indexes: the
    segments are extracted at the same time, and a member below a symlink of another segment
    is refused whichever segment is judged first. (The archive's own symlinks are held
    whatever the index says: nothing written follows one.)"""
    links: set[str] = set()
    hard: list[tuple[str, str]] = []
    for seg in manifest["segments"]:
        if seg["name"] not in sel.members:
            continue
        prefix = manifest["filesystems"][seg["fs"]]["prefix"]
        members = sel.members[seg["name"]]
        wanted = None if members is None else {
            b"/".join(p for p in m.split(b"/") if p and p != b".") for m in members}
        try:
            for r in index.read(str(gen.path / "segments" / f"{seg['name']}.idx.gz")):
                if r.type in "lh" and (wanted is None or index.member(prefix, r.path)
                                       in wanted):
                    if r.type == "l":
                        links.add(r.path)
                    else:
                        hard.append((r.path, r.target))
        except index.Damaged as e:
            raise Damaged(f"{e}: run `steward backup verify {gen.id}`; nothing was "
                          "restored") from None
    links |= {path for path, target in hard if target in links}
    return {os.fsencode(p.lstrip("/")) for p in links}


def _took(j: jail.Jail, say: Callable[[str], None],
          got: tuple[str, list[tuple[str, bytes]], list[str]]) -> None:
    prefix, held, lines = got
    j.held.setdefault(prefix, []).extend(held)
    for line in lines:
        say(line)


def _in(j: jail.Jail, prefix: str, work: Callable[[int], object]) -> bool:
    """Run ``work`` with the folder of ``prefix`` open; False (and a refusal) if it cannot be
    reached beneath the destination without a symlink."""
    try:
        fd = j.directory(prefix)
    except jail.Refused as e:
        j.refuse(f"refused everything of /{prefix}: {e}")
        return False
    try:
        work(fd)
    finally:
        os.close(fd)
    return True


def _make_links(j: jail.Jail, prefix: str, headers: list[bytes]) -> Callable[[int], None]:
    def work(fd: int) -> None:
        for line in jail.make_held(headers, fd):
            j.refuse(f"not restored (making the symlinks of /{prefix}): {line}")
    return work


def _extract(gen: Generation, name: str, prefix: str, members: list[bytes] | None, *,
             j: jail.Jail, sha256: str | None = None
             ) -> tuple[str, list[tuple[str, bytes]], list[str]]:
    """One segment into its filesystem's folder: (prefix, what was held with its type,
    tar's lines). With ``sha256``, checked while it is read: if it differs, what tar wrote
    of it is removed and a Mismatch says so."""
    wanted = None if members is None else {
        b"/".join(p for p in m.split(b"/") if p and p != b".") for m in members}
    path = str(gen.path / "segments" / f"{name}.tar.zst")
    kinds: list[str] = []
    got: list[tuple[str, bytes]] = []
    said: list[str] = []
    mine: set[bytes] = set()

    def work(fd: int) -> None:
        try:
            held, cut, lines = jail.extract(path, fd, j.judge(prefix, name, wanted, kinds,
                                                              mine), sha256)
        except jail.Mismatch as e:
            seg = next((s for s in gen.manifest()["segments"] if s["name"] == name), None)
            what = f"; it holds {_holds(gen, seg)}" if seg is not None else ""
            removed = j.take_back(mine)
            raise jail.Mismatch(e.path, f"segments/{name}.tar.zst is damaged (sha256 differs"
                                f"{what}), found while it was extracted: the {removed} files "
                                "written from it were removed again") from None
        got.extend(zip(kinds, held))
        if cut:
            j.refuse(f"refused the rest of segments/{name}.tar.zst: {cut}")
        said.extend(lines)

    _in(j, prefix, work)
    return prefix, got, said
