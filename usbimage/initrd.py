"""Read a restored system's initramfs without its tools: the names it holds (for the drivers)
and the small configuration files in it (for the UUIDs and the LVM devices file it was made
with), so the restore rebuilds it only when it would not find the new disks.

An initramfs is one or more newc cpio archives back to back: uncompressed ones first (early
microcode), the main one compressed (gzip, xz, lzma, bzip2 from the standard library; zstd
and lz4 through their tools). It comes off the backup drive, so it is untrusted: names and
kept files are bounded, the stream is read once and never written anywhere.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from agent.fileio import read_exactly

MAX_NAME = 4096
MAX_KEPT = 256 * 1024  # a configuration file larger than this is not read (lvm.conf: ~100 KB)
MAX_ENTRIES = 1_000_000
KEPT_DIRS = ("etc/", "conf/", "cryptroot/")  # dracut's and initramfs-tools' configuration
T_DECOMPRESS = 300


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class InitrdError(Exception):
    """The file is not an initramfs this reader understands."""


@dataclass
class Initrd:
    names: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # small files under KEPT_DIRS

    def modules(self) -> set[str]:
        """Kernel modules it holds, named as sysfs names them (dashes as underscores)."""
        return {n.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")
                for n in self.names if ".ko" in n.rsplit("/", 1)[-1]}


def _exact(fh: _Reader, n: int) -> bytes:
    data = read_exactly(fh.read, n)
    if len(data) < n:
        raise InitrdError("truncated cpio archive")
    return data


def _skip(fh: _Reader, n: int) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            raise InitrdError("truncated cpio archive")
        n -= len(chunk)


def _cpio(fh: _Reader, out: Initrd, first: bytes = b"") -> int:
    """One newc archive up to its trailer; returns the bytes read (for the padding)."""
    read = 0
    while True:
        head = first + _exact(fh, 110 - len(first))
        first = b""
        if head[:6] not in (b"070701", b"070702"):
            raise InitrdError(f"not a newc cpio header: {head[:6]!r}")
        try:
            mode, size, namesize = (int(head[14:22], 16), int(head[54:62], 16),
                                    int(head[94:102], 16))
        except ValueError:
            raise InitrdError("bad cpio header") from None
        if not 0 < namesize <= MAX_NAME:
            raise InitrdError(f"cpio name of {namesize} bytes")
        name = _exact(fh, namesize)[:-1].decode("utf-8", "surrogateescape").lstrip("./")
        pad = (-(110 + namesize)) % 4
        _exact(fh, pad)
        read += 110 + namesize + pad
        if name == "TRAILER!!!":
            return read
        if len(out.names) >= MAX_ENTRIES:
            raise InitrdError(f"more than {MAX_ENTRIES} entries")
        out.names.append(name)
        regular = mode & 0o170000 == 0o100000
        if regular and size <= MAX_KEPT and name.startswith(KEPT_DIRS):
            out.files[name] = _exact(fh, size)
        else:
            _skip(fh, size)
        _exact(fh, (-size) % 4)
        read += size + (-size) % 4


def _stream(fh: BinaryIO, magic: bytes) -> tuple[_Reader, subprocess.Popen[bytes] | None]:
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=fh), None
    if magic.startswith(b"\xfd7zXZ") or magic.startswith(b"\x5d\x00\x00"):
        return lzma.LZMAFile(fh), None
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(fh), None
    tool = ("zstd" if magic.startswith(b"\x28\xb5\x2f\xfd") else
            "lz4" if magic.startswith(b"\x02\x21\x4c\x18") else None)
    if tool is None:
        raise InitrdError(f"unknown compression (starts {magic[:4].hex()})")
    path = shutil.which(tool)
    if path is None:
        raise InitrdError(f"compressed with {tool}, which is not installed")
    os.lseek(fh.fileno(), fh.tell(), os.SEEK_SET)  # the tool reads the descriptor itself
    proc = subprocess.Popen([path, "-dcq"], stdin=fh, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    return proc.stdout, proc


def read(path: str) -> Initrd:
    out = Initrd()
    with open(path, "rb") as fh:
        while True:
            start = fh.tell()
            magic = fh.read(6)
            if magic in (b"070701", b"070702"):
                _cpio(fh, out, magic)
                while True:  # zero padding up to the next archive
                    pos = fh.tell()
                    b = fh.read(4)
                    if b != b"\0\0\0\0":
                        fh.seek(pos)
                        break
                continue
            if not magic:
                if not out.names:
                    raise InitrdError("empty file")
                return out
            fh.seek(start)
            stream, proc = _stream(fh, magic)
            timer = threading.Timer(T_DECOMPRESS, proc.kill) if proc else None
            if timer:
                timer.start()
            try:
                while True:  # the kernel takes several archives in one compressed stream
                    first = stream.read(4)
                    while first == b"\0\0\0\0":
                        first = stream.read(4)  # padding between them (4-byte aligned)
                    if not first.strip(b"\0"):
                        break
                    _cpio(stream, out, first)
                if proc and proc.wait(T_DECOMPRESS) != 0:
                    raise InitrdError(f"the decompressor failed with exit status "
                                      f"{proc.returncode}")
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise InitrdError(f"cannot decompress: {e}") from None
            finally:
                if proc:
                    proc.kill()
                    proc.wait(10)
                if timer:
                    timer.cancel()
            if not out.names:
                raise InitrdError("no files in it")
            return out
