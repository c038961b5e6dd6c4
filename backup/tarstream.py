"""A segment's tar stream on its way from zstd to ``tar --extract``: every member's header is
parsed here and handed to a judge, which forwards it, drops it, or holds it back for later;
tar sees only what was forwarded. Only the posix format steward writes is accepted (ustar
headers with pax extended headers, GNU sparse 1.0); anything else ends the segment, so what
this reader takes a member's name and size to be is what tar takes them to be."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BLOCK = 512
ZERO = bytes(BLOCK)
CHUNK = 1 << 20
PAX_LIMIT = 8 << 20  # an extended header (xattrs, ACLs, long names) beyond this is refused
# regular, hard link, symlink, char and block device, directory, fifo
TYPES = ("0", "1", "2", "3", "4", "5", "6")
FORWARD, DROP, HOLD = "forward", "drop", "hold"


class StreamError(Exception):
    """The rest of the segment cannot be read as a steward archive; nothing more of it is
    extracted."""


@dataclass(frozen=True)
class Member:
    name: bytes  # as tar will use it, e.g. b"etc/passwd", b"./", b"etc/"
    type: str  # the tar type flag: "0" file, "1" hard link, "2" symlink, "3" "4" device, ...
    link: bytes  # symlink target or hard-link target name
    offset: int  # of its first header in the uncompressed stream


class _In:
    def __init__(self, fd: int) -> None:
        self.fd, self.chunk, self.pos, self.offset = fd, b"", 0, 0

    def _more(self) -> bytes:
        try:
            data = os.read(self.fd, CHUNK)
        except OSError as e:
            raise StreamError(f"cannot read the decompressed archive: {e.strerror}") from None
        if not data:
            raise StreamError(f"the archive ends in the middle of a member (at byte "
                              f"{self.offset})")
        return data

    def exact(self, n: int) -> bytes:
        end = self.pos + n
        if end <= len(self.chunk):
            out = self.chunk[self.pos:end]
            self.pos = end
        else:
            parts, got = [self.chunk[self.pos:]], len(self.chunk) - self.pos
            while got < n:
                data = self._more()
                parts.append(data)
                got += len(data)
            joined = b"".join(parts)
            out, self.chunk, self.pos = joined[:n], joined, n
        self.offset += n
        return out

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.fd, CHUNK):
                pass

    def span(self, n: int) -> Iterator[memoryview]:
        """The next ``n`` bytes, as views into what was read (valid until the next call)."""
        while n:
            if self.pos >= len(self.chunk):
                self.chunk, self.pos = self._more(), 0
            k = min(n, len(self.chunk) - self.pos)
            yield memoryview(self.chunk)[self.pos:self.pos + k]
            self.pos += k
            self.offset += k
            n -= k


class _Out:
    def __init__(self, fd: int) -> None:
        self.fd, self.size = fd, 0
        self.parts: list[bytes] = []

    def add(self, data: bytes | memoryview) -> None:
        self.parts.append(data if isinstance(data, bytes) else bytes(data))
        self.size += len(data)
        if self.size >= CHUNK:
            self.flush()

    def flush(self) -> None:
        parts = self.parts
        while parts:
            n = os.writev(self.fd, parts[:1024])
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if n:
                parts[0] = parts[0][n:]
        self.size = 0


def _round(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


def _num(field: bytes, what: str) -> int:
    if field[0] & 0x80:  # base-256, as tar writes numbers too large for octal
        if field[0] != 0x80:
            raise StreamError(f"negative or oversized {what} in a tar header")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise StreamError(f"{what} {text[:20]!r} in a tar header is not a number") from None


def _header(h: bytes, at: int) -> None:
    total = sum(h) - sum(h[148:156]) + 8 * 32
    if _num(h[148:156], "checksum") != total:
        raise StreamError(f"tar header at byte {at} fails its checksum")
    if h[257:265] != b"ustar\x0000":
        raise StreamError(f"tar header at byte {at} is not in the posix format steward writes")


def _pax(data: bytes, at: int) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    i = 0
    try:
        while i < len(data):
            sp = data.index(b" ", i, i + 20)
            length = int(data[i:sp])
            record = data[sp + 1:i + length]
            if length <= sp - i or i + length > len(data) or not record.endswith(b"\n"):
                raise ValueError
            key, eq, value = record[:-1].partition(b"=")
            if not eq or key in out:
                raise ValueError
            out[key] = value
            i += length
    except ValueError:
        raise StreamError(f"malformed extended header at byte {at}") from None
    for key in (b"path", b"linkpath", b"GNU.sparse.name", b"size"):
        if key in out and (not out[key] or b"\0" in out[key]):
            raise StreamError(f"empty or NUL-holding {key.decode()} in the extended header "
                              f"at byte {at}")
    return out


def _field(h: bytes, start: int, end: int) -> bytes:
    return h[start:end].split(b"\0", 1)[0]


def _next(inp: _In) -> tuple[list[bytes], Member, int] | None:
    """The next member: its raw headers, itself and its data's size; None at the end."""
    at = inp.offset
    h = inp.exact(BLOCK)
    if h == ZERO:
        return None
    pending, pax = [h], {}
    if h[156:157] == b"x":
        _header(h, at)
        size = _num(h[124:136], "size")
        if size > PAX_LIMIT:
            raise StreamError(f"extended header of {size} bytes at byte {at}")
        body = inp.exact(_round(size))
        pax = _pax(body[:size], at)
        h = inp.exact(BLOCK)
        pending += [body, h]
        if h == ZERO:
            raise StreamError(f"extended header at byte {at} belongs to no member")
    _header(h, inp.offset - BLOCK)
    kind = h[156:157].decode("latin-1")
    if kind not in TYPES:
        raise StreamError(f"tar member of type {kind!r} at byte {at}: steward does not write "
                          "those")
    # GNU.sparse.name wins over path whatever their order, as in tar's decoder.
    name = pax.get(b"GNU.sparse.name") or pax.get(b"path")
    if name is None:
        prefix, short = _field(h, 345, 500), _field(h, 0, 100)
        name = prefix + b"/" + short if prefix else short
    link = pax.get(b"linkpath") or _field(h, 157, 257)
    try:
        size = int(pax[b"size"]) if b"size" in pax else _num(h[124:136], "size")
    except ValueError:
        raise StreamError(f"size in the extended header at byte {at} is not a number") from None
    if size and kind != "0":
        raise StreamError(f"tar member {name[:200]!r} at byte {at}: data on a member that "
                          "holds none")
    return pending, Member(name, kind, link, at), size


def filter_stream(rfd: int, wfd: int, judge: Callable[[Member], str]) -> list[bytes]:
    """Copy the tar stream from ``rfd`` to ``wfd``, each member as ``judge`` decides; what it
    holds is returned (the raw headers, for a later tar run). A StreamError stops the copy
    after an end-of-archive mark, so tar ends cleanly on what it was given."""
    inp, out = _In(rfd), _Out(wfd)
    held: list[bytes] = []
    between = True  # at a member boundary: an end mark may follow
    try:
        while (got := _next(inp)) is not None:
            pending, member, size = got
            what = judge(member)
            if what == FORWARD:
                between = False
                for p in pending:
                    out.add(p)
                for view in inp.span(_round(size)):
                    out.add(view)
                between = True
            else:
                if what == HOLD:
                    held.append(b"".join(pending))
                for _ in inp.span(_round(size)):
                    pass
        out.add(ZERO + ZERO)
        between = False
        out.flush()
        inp.drain()  # what follows the end mark (a record's padding): zstd writes it all
    finally:
        if between:
            out.add(ZERO + ZERO)
        try:
            out.flush()
        except OSError as e:
            if e.errno != errno.EPIPE:  # tar ended early: its own message says why
                raise
    return held
