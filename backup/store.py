"""The backup target: committed generations, the partial one being written, the lock.

TARGET/<id>/ is a committed generation (id = UTC time, e.g. 20261123T031500Z): manifest.json,
layout.json, SHA256SUMS (``sha256sum -c`` works) and segments/NNNN.tar.zst + NNNN.idx.gz.
A generation is written as TARGET/.partial-<id> and renamed only after it was read back and
matched its checksums; a deleted one is first renamed to .deleting-<id>. So a name without a
dot is always complete, and anything with one is cleaned up by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fileio import Locked, flocked, fsync_dir, read_json, write_atomic

GEN_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")


class StoreError(Exception):
    """The target or a generation cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Generation:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    def manifest(self) -> dict[str, Any]:
        try:
            data = read_json(self.path / "manifest.json")
        except (OSError, ValueError) as e:
            raise StoreError(f"generation {self.id}: manifest.json unreadable: {e}") from None
        if not isinstance(data, dict) or data.get("format") != 1:
            raise StoreError(f"generation {self.id}: manifest.json is not a steward manifest")
        return data

    def verify_record(self) -> dict[str, Any] | None:
        """The result of the last ``steward backup verify``, if any."""
        try:
            data = read_json(self.path / "verify.json")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def verified(self, manifest: dict[str, Any]) -> bool:
        record = self.verify_record()
        if record is not None:
            return bool(record.get("ok"))
        return bool(manifest.get("verified"))

    def record_verify(self, record: dict[str, Any]) -> None:
        """Keep the result; a read-only target (the drive as a rescue boot's root) keeps the
        old one."""
        try:
            write_atomic(self.path / "verify.json", json.dumps(record, indent=1) + "\n")
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise


class Store:
    def __init__(self, target: Path) -> None:
        self.target = target

    def check(self) -> None:
        if not self.target.is_dir():
            raise StoreError(f"backup target {self.target} is not a directory")

    def generations(self) -> list[Generation]:
        """Committed generations, oldest first."""
        self.check()
        return sorted((Generation(p) for p in self.target.iterdir()
                       if GEN_ID.match(p.name) and p.is_dir()), key=lambda g: g.id)

    def find(self, gen_id: str | None) -> Generation:
        gens = self.generations()
        if not gens:
            raise StoreError(f"no backup generations in {self.target}")
        if gen_id is None or gen_id == "latest":
            return gens[-1]
        for g in gens:
            if g.id == gen_id:
                return g
        raise StoreError(f"no generation {gen_id} in {self.target} (there are: "
                         f"{', '.join(g.id for g in gens[-5:])})")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer per target; a second backup is refused, not queued."""
        self.check()
        try:
            with flocked(self.target / ".lock", note_pid=True):
                yield
        except Locked as e:
            raise StoreError(f"another backup (pid {e.holder or '?'}) is writing to "
                             f"{self.target}") from None

    def clean_partial(self) -> list[str]:
        """Remove what an interrupted run left (call with the lock held)."""
        removed = []
        for p in sorted(self.target.iterdir()):
            if p.name.startswith((".partial-", ".deleting-")) and p.is_dir():
                shutil.rmtree(p)
                removed.append(p.name)
        return removed

    def new_id(self, now: str) -> str:
        gen_id, n = now, 1
        while (self.target / gen_id).exists() or (self.target / f".partial-{gen_id}").exists():
            n += 1
            gen_id = f"{now}-{n}"
        return gen_id

    def commit(self, partial: Path, gen_id: str) -> Generation:
        final = self.target / gen_id
        _fsync_tree(partial)
        os.rename(partial, final)
        fsync_dir(self.target)
        return Generation(final)

    def retain(self, keep: int) -> list[str]:
        """Delete the oldest generations beyond ``keep``; never the newest verified one."""
        gens = self.generations()
        verified = [g for g in gens if _safe_verified(g)]
        newest_good = verified[-1].id if verified else None
        dropped = []
        for g in gens[:-keep] if keep < len(gens) else []:
            if g.id == newest_good:
                continue
            doomed = self.target / f".deleting-{g.id}"
            os.rename(g.path, doomed)
            shutil.rmtree(doomed)
            dropped.append(g.id)
        if dropped:
            fsync_dir(self.target)
        return dropped


def _safe_verified(g: Generation) -> bool:
    try:
        return g.verified(g.manifest())
    except StoreError:
        return False


def _fsync_tree(path: Path) -> None:
    """Files are fsynced as they are written; their folders are made durable here."""
    for dirpath, _, _ in os.walk(path):
        fsync_dir(Path(dirpath))
