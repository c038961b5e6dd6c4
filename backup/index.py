"""The file index of a segment: a JSON array with a row per archived name, for single-file
restore and for comparing with the live system. Names are "/"-rooted paths from the source
root; names that are not UTF-8 are kept exactly (surrogate escapes, as os.fsdecode gives
them)."""

from __future__ import annotations

import gzip
import json
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from backup.plan import Segment
from backup.walk import Entry

# Decompressed, an index beyond this is refused (a drive is untrusted input): ~1,300 bytes
# per row of the largest segment the cutter makes (196,608 directories).
LIMIT = 256 << 20
_ROW = (str, str, int, int, int, int, int, str)
_TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFIFO: "p"}


def logical(prefix: bytes, name: bytes) -> str:
    """The "/"-rooted path from the source root of ``name`` on the filesystem at ``prefix``."""
    if name == b".":
        return "/" + os.fsdecode(prefix)
    return "/" + os.fsdecode(prefix + b"/" + name if prefix else name)


def member(prefix: str, path: str) -> bytes:
    """The tar member name of ``path`` (from ``logical``) in a segment of ``prefix``."""
    rel = path[1 + len(prefix):].lstrip("/") if prefix else path[1:]
    return os.fsencode(rel) if rel else b"."


@dataclass(frozen=True)
class Record:
    path: str
    type: str  # f d l c b p, or h: a further name of the inode at ``target``
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    target: str  # symlink target or, for h, the first name


def write(path: str, prefix: bytes, seg: Segment, root: bytes) -> None:
    rows = []
    decode, types, links = os.fsdecode, _TYPES, seg.link_to
    for i, e in enumerate(seg.members):
        s: os.stat_result = e.st
        kind, target = types.get(stat.S_IFMT(s.st_mode), "?"), ""
        if links and i in links:
            kind, target = "h", logical(prefix, links[i])
        elif kind == "l":
            target = decode(_readlink(root, e))
        rows.append([logical(prefix, e.name), kind, s.st_mode, s.st_uid, s.st_gid, s.st_size,
                     s.st_mtime_ns, target])
    with open(path, "xb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
            gz.write(json.dumps(rows).encode("ascii"))  # json's C encoder, in one call
        raw.flush()
        os.fsync(raw.fileno())


def _readlink(root: bytes, e: Entry) -> bytes:
    try:
        return os.readlink(os.path.join(root, e.name) if e.name != b"." else root)
    except OSError:
        return b""


class Damaged(ValueError):
    """The index cannot be read as one steward wrote; the message says how."""


def read(path: str) -> Iterator[Record]:
    """The rows of an index, each checked; Damaged before the first one if any is not."""
    name = "/".join(path.split("/")[-2:])
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read(LIMIT + 1)
    except (OSError, EOFError, zlib.error) as e:
        why = (e.strerror if isinstance(e, OSError) else None) or str(e) or "truncated"
        raise Damaged(f"{name}: index damaged ({why})") from None
    if len(raw) > LIMIT:
        raise Damaged(f"{name}: index damaged (over {LIMIT >> 20} MiB decompressed)")
    try:
        rows = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise Damaged(f"{name}: index damaged (not JSON in UTF-8: {str(e)[:100]})") from None
    if not isinstance(rows, list):
        raise Damaged(f"{name}: index damaged (not a list of rows)")
    for i, v in enumerate(rows):
        if (not isinstance(v, list) or len(v) != len(_ROW)
                or not all(type(x) is t for x, t in zip(v, _ROW))
                or not v[0].startswith("/") or v[1] not in "fdlcbph" or len(v[1]) != 1):
            raise Damaged(f"{name}: index damaged (row {i + 1} is not a steward index row)")
    return iter([Record(*v) for v in rows])
