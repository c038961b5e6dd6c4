"""Issued dates and reboot_suggested flags from the updateinfo.xml in dnf's cache.

dnf 4's ``updateinfo`` command shows neither (only the "Updated" date), and no dnf 4 tool
prints them, so this is the one place where steward reads repository metadata itself: the
files dnf downloaded into ``<cachedir>/<repo>-<hash>/repodata/`` on its last refresh.
"""

from __future__ import annotations

import bz2
import calendar
import gzip
import logging
import lzma
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Union

log = logging.getLogger(__name__)

_Reader = Union[IO[bytes], gzip.GzipFile, lzma.LZMAFile, bz2.BZ2File]


def cached_files(cachedir: Path) -> list[Path]:
    """Every updateinfo file in dnf's cache, newest first."""
    try:
        found = [p for p in cachedir.glob("*/repodata/*updateinfo.xml*") if p.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def issued_and_reboot(cachedir: Path, ids: Collection[str]
                      ) -> dict[str, tuple[float | None, bool]]:
    """Advisory id -> (issued epoch or None, reboot_suggested) for the ``ids`` found in the
    cached updateinfo files; ids not found are left out. Unreadable files are skipped."""
    wanted = set(ids)
    out: dict[str, tuple[float | None, bool]] = {}
    for path in cached_files(cachedir):
        if not wanted - out.keys():
            break
        try:
            with _open(path) as f:
                for aid, issued, reboot in _updates(f, wanted - out.keys()):
                    out[aid] = (issued, reboot)
        except (OSError, EOFError, ET.ParseError, lzma.LZMAError, ValueError) as e:
            log.warning("cannot read %s: %s", path, e)
    return out


def _open(path: Path) -> _Reader:
    suffix = path.suffix
    if suffix == ".xml":
        return path.open("rb")
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    # .zst (Fedora) has no reader in Python's standard library before 3.14: such an
    # advisory keeps issued None, and its "Updated" date stands in.
    raise ValueError(f"no reader for {suffix!r} files")


def _updates(f: _Reader, wanted: set[str]) -> Iterator[tuple[str, float | None, bool]]:
    """(id, issued, reboot_suggested) of each wanted <update>; elements are cleared as they
    are read, so a 50 MB updateinfo does not sit in memory."""
    # Repository metadata is as trusted as the packages root installs from it; expat
    # (2.4+) refuses entity-expansion bombs.
    for _, el in ET.iterparse(f):  # noqa: S314
        if el.tag != "update":
            continue
        aid = (el.findtext("id") or "").strip()
        if aid in wanted:
            issued_el = el.find("issued")
            issued = parse_date(issued_el.get("date", "")) if issued_el is not None else None
            reboot = any((p.text or "").strip().lower() in ("1", "true", "yes")
                         for p in el.iter("reboot_suggested")) or \
                el.get("reboot_suggested", "").lower() in ("1", "true", "yes")
            yield aid, issued, reboot
        el.clear()


def parse_date(text: str) -> float | None:
    """updateinfo dates: "2025-01-15 10:00:00" or "2025-01-15" (UTC, as libsolv reads
    them) or epoch seconds (SUSE, some mirrors)."""
    text = text.strip()
    if text.isdigit():
        return float(text)
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, fmt)))
        except ValueError:
            continue
    return None
