"""tar | zstd pipelines: writing a segment (read back from the device and compared with the
bytes written before it counts) and comparing one with the live tree (restore extracts
through backup.jail)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import subprocess
import threading
from collections.abc import Iterator, Sequence

# Every attribute restore needs: xattrs of all namespaces (security.selinux,
# security.capability, user.*), POSIX ACLs, sparse maps, numeric owners, nanosecond times.
TAR_ATTRS = ["--format=posix", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
             "--selinux"]
CHUNK = 1 << 20
# tar's records: 512 blocks of 512 bytes (256 KiB), not 20 (10 KiB). Each write into the pipe
# wakes zstd; with 10 KiB records that is 200,000 wake-ups for 2 GB. The archive stays plain
# tar (the end is padded to a whole record, zeros that zstd all but drops); tar reads it back
# from a pipe whatever the record size.
BLOCKING = 512
# Reading: whole records of that size, gathered from however the pipe delivers them, so tar
# reads to the archive's end (else zstd gets EPIPE on the padding); a last short record (10 KiB
# records, archives of earlier versions) is fine.
READ_RECORDS = [f"--blocking-factor={BLOCKING}", "--read-full-records"]
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ from Python 3.10 on
TAR_TIMEOUT = 6 * 3600.0  # one segment; a hung device is killed, not waited for forever
KEEPS_NOT = "the target does not keep what is written to it"


class ArchiveError(Exception):
    """A segment could not be written, read or extracted; the message says which and why."""


TARGET_ERRORS = {errno.ENOSPC: "the backup target is full",
                 errno.EDQUOT: "the backup target's quota is exhausted",
                 errno.EIO: "I/O error on the backup target",
                 errno.ENODEV: "the backup target vanished",
                 errno.ENXIO: "the backup target vanished",
                 errno.EROFS: "the backup target became read-only"}


def target_error(path: str, e: OSError) -> ArchiveError:
    """An OSError on the target as a sentence: a full disk is never anything but a failure."""
    what = TARGET_ERRORS.get(e.errno or 0) or (
        "the backup target vanished" if e.errno == errno.ENOENT else e.strerror or str(e))
    return ArchiveError(f"{what} ({path}: {e.strerror})")


class Pipeline:
    """``tar -c`` of ``names`` under ``root`` | ``zstd`` -> ``fd``, the open file ``path``;
    ``read_bytes`` tells progress while it runs."""

    def __init__(self, root: str, names: Sequence[bytes], path: str, level: int,
                 threads: int = 0) -> None:
        self.root, self.names, self.path, self.level = root, names, path, level
        self.threads = threads  # zstd's; 0: one per CPU
        self.tar: subprocess.Popen[bytes] | None = None
        self.zstd: subprocess.Popen[bytes] | None = None
        self.cancelled = threading.Event()

    def read_bytes(self) -> int:
        """What tar has read so far (its rchar), 0 before it starts or after it ends."""
        tar = self.tar
        if tar is None:
            return 0
        try:
            with open(f"/proc/{tar.pid}/io", "rb") as fh:
                for line in fh:
                    if line.startswith(b"rchar:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def cancel(self) -> None:
        self.cancelled.set()
        for proc in (self.tar, self.zstd):  # zstd too: it may hang writing to a dead device
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    def run(self, fd: int) -> list[str]:
        """Write the archive into ``fd`` (not fsynced: see ``read_back``); tar's warnings. zstd
        writes the file itself: no copy through this process."""
        tar_argv = ["tar", "--create", "--file=-", f"--blocking-factor={BLOCKING}", *TAR_ATTRS,
                    "--sparse", "--no-recursion", "--ignore-failed-read",
                    f"--directory={self.root}", "--null", "--verbatim-files-from",
                    "--files-from=-"]
        # --check: a content checksum per frame, which read_back falls back on. One archive
        # of several at once: --single-thread, no I/O thread beside the compressor.
        threads = "--single-thread" if self.threads == 1 else f"-T{self.threads}"
        zstd_argv = ["zstd", f"-{self.level}", threads, "--check", "-q", "-c"]
        env = dict(os.environ, LC_ALL="C")
        with subprocess.Popen(tar_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) as tar, \
                subprocess.Popen(zstd_argv, stdin=tar.stdout, stdout=fd,
                                 stderr=subprocess.PIPE, env=env) as zstd:
            self.tar, self.zstd = tar, zstd
            assert tar.stdin and tar.stdout and tar.stderr and zstd.stderr
            big_pipe(tar.stdout.fileno())
            tar.stdout.close()  # zstd holds it now
            errors: list[bytes] = []
            tar_stderr = tar.stderr
            feeder = threading.Thread(target=_feed, args=(tar.stdin, self.names), daemon=True)
            drain = threading.Thread(target=lambda: errors.append(tar_stderr.read()),
                                     daemon=True)
            feeder.start()
            drain.start()
            timer = threading.Timer(TAR_TIMEOUT, self.cancel)
            timer.start()
            try:
                zerr = zstd.stderr.read()  # until zstd ends
                zstd.wait()
            finally:
                timer.cancel()
                feeder.join(60)
                tar.wait(60)
                drain.join(60)
                self.tar = self.zstd = None
        if self.cancelled.is_set():
            raise ArchiveError(f"{self.path}: cancelled")
        zstd_err = zerr.decode("utf-8", "replace").strip()
        if zstd.returncode != 0:
            failed = _os_error(zstd_err)
            if failed is not None:
                raise target_error(self.path, failed)
            raise ArchiveError(f"zstd failed (exit {zstd.returncode}): {zstd_err[-300:]}")
        tar_err = b"".join(errors).decode("utf-8", "replace").strip()
        if tar.returncode not in (0, 1):
            raise ArchiveError(f"tar failed (exit {tar.returncode}) in {self.root}: "
                               f"{tar_err[-500:]}")
        return tar_err.splitlines()


def _os_error(message: str) -> OSError | None:
    """The target's error in zstd's message (C locale), as an OSError: zstd writes the file."""
    for code in TARGET_ERRORS:
        text = os.strerror(code)
        if text in message:
            return OSError(code, text)
    return None


def _feed(stdin: object, names: Sequence[bytes]) -> None:
    with contextlib.suppress(BrokenPipeError, OSError), stdin:  # type: ignore[attr-defined]
        for i in range(0, len(names), 512):
            stdin.write(b"".join(n + b"\0" for n in names[i:i + 512]))  # type: ignore


def big_pipe(fd: int) -> None:
    """Fewer, larger reads and writes through a pipe (best effort)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)


def create_file(path: str) -> int:
    """A new archive file, open for writing; it must not exist yet."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise target_error(path, e) from None


def read_back(path: str, written: int) -> tuple[str, int]:
    """Fsync ``written``, the open file ``path`` (the descriptor that wrote it, so a failed
    writeback is reported to it), then read it back from the device (O_DIRECT, past the page
    cache) and compare it with the bytes written, still in the page cache: the sha256 and size
    of what the device gave back. Where a written page has left memory (or the filesystem has
    no O_DIRECT) the device's bytes are decompressed instead and checked against zstd's
    content checksums. A device that does not keep what was written to it is an
    ArchiveError."""
    try:
        os.fsync(written)
        digest, size, same = _compare(path)
    except OSError as e:
        raise target_error(path, e) from None
    if same is False:
        raise ArchiveError(f"{path}: the bytes read back from the device differ from those "
                           f"written: {KEEPS_NOT}")
    if same is None:
        check_frames(path, KEEPS_NOT)
    return digest, size


def _compare(path: str) -> tuple[str, int, bool | None]:
    """sha256 and size of ``path`` as read from the device; True if every chunk equals the
    page cache's, False if one differs, None if that could not be told."""
    h = hashlib.sha256()
    size = 0
    mem = bytearray(4 * CHUNK)
    with _open_device(path) as (fd, direct), open(path, "rb", buffering=0) as cached:
        same: bool | None = True if direct else None
        for chunk in _chunks(fd):
            h.update(chunk)
            if same:
                same = _same(cached.fileno(), size, mem, chunk)
                if same is False:
                    break
            size += len(chunk)
    return h.hexdigest(), size, same


@contextlib.contextmanager
def _open_device(path: str) -> Iterator[tuple[int, bool]]:
    """``path`` open to read what the device holds: with O_DIRECT (True), or where the
    filesystem has none, after dropping its cached pages (False)."""
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        fd, direct = os.open(path, flags | os.O_DIRECT), True
    except OSError:
        fd, direct = os.open(path, flags), False
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        yield fd, direct
    finally:
        os.close(fd)


def _chunks(fd: int) -> Iterator[memoryview]:
    """What is left to read of ``fd``, in chunks of up to 4 MiB read into one page-aligned
    buffer (as O_DIRECT needs): each chunk is valid until the next."""
    buf = mmap.mmap(-1, 4 * CHUNK)
    try:
        with memoryview(buf) as whole:
            while n := os.readv(fd, [buf]):
                with whole[:n] as chunk:
                    yield chunk
    finally:
        buf.close()


def _same(cached: int, offset: int, mem: bytearray, device: memoryview) -> bool | None:
    """Do the bytes read from the device at ``offset`` equal the page cache's? None if the
    page cache no longer holds them all (RWF_NOWAIT: it never reads the device). Exactly as
    many bytes are asked for: a read past the end of the file is refused as not cached when
    the last page's blocks beyond it are not up to date."""
    n, got = len(device), 0
    with memoryview(mem) as view:
        while got < n:
            try:
                k = os.preadv(cached, [view[got:n]], offset + got, os.RWF_NOWAIT)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                    return None
                raise
            if k == 0:
                return None
            got += k
    # bytearray == memoryview compares with memcmp (a memoryview on each side would not).
    return mem == device if n == len(mem) else mem[:n] == device


def hash_file(path: str) -> tuple[str, int]:
    """sha256 and size of a file."""
    h = hashlib.sha256()
    size = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for chunk in _chunks(fd):
                h.update(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise target_error(path, e) from None
    return h.hexdigest(), size


def check_frames(path: str, why: str) -> None:
    """Decompress what the device holds of ``path`` (``zstd -t``: its content checksums must
    match); an ArchiveError saying ``why`` if they do not."""
    env = dict(os.environ, LC_ALL="C")
    with subprocess.Popen(["zstd", "-t", "-q", "-"], stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as zstd:
        assert zstd.stdin is not None and zstd.stderr is not None
        timer = threading.Timer(TAR_TIMEOUT, zstd.kill)
        timer.start()
        try:
            with contextlib.suppress(BrokenPipeError), zstd.stdin, \
                    _open_device(path) as (fd, _):
                for chunk in _chunks(fd):
                    zstd.stdin.write(chunk)
            err = zstd.stderr.read().decode("utf-8", "replace").strip()
            zstd.wait()
        except OSError as e:
            zstd.kill()
            raise target_error(path, e) from None
        finally:
            timer.cancel()
    if zstd.returncode != 0:
        raise ArchiveError(f"{path}: {why} (zstd -t: {err[-300:] or 'killed'})")


def compare(path: str, live_root: str) -> list[str]:
    """``tar --compare`` of a segment against the live tree: the lines that differ."""
    argv = ["tar", "--compare", "--file=-", *READ_RECORDS, *TAR_ATTRS,
            f"--directory={live_root}"]
    return _pipe_into_tar(path, argv, ok=(0, 1))


def tar_output(tar: subprocess.Popen[bytes], zstd: subprocess.Popen[bytes], path: str) -> bytes:
    """What tar printed once it ended, within TAR_TIMEOUT; past it both are killed."""
    try:
        out, _ = tar.communicate(timeout=TAR_TIMEOUT)
    except subprocess.TimeoutExpired:
        tar.kill()
        zstd.kill()
        raise ArchiveError(f"{path}: tar took longer than {TAR_TIMEOUT:.0f} s") from None
    return out


def _pipe_into_tar(path: str, tar_argv: list[str], ok: tuple[int, ...] = (0,)) -> list[str]:
    env = dict(os.environ, LC_ALL="C")
    with subprocess.Popen(["zstd", "-dc", "-q", path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as zstd:
        tar = subprocess.Popen(tar_argv, stdin=zstd.stdout, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env)
        assert zstd.stdout is not None
        zstd.stdout.close()
        out = tar_output(tar, zstd, path)
        zerr = zstd.stderr.read() if zstd.stderr else b""
        zstd.wait(60)
    lines = out.decode("utf-8", "replace").splitlines()
    if zstd.returncode != 0:
        raise ArchiveError(f"{path}: cannot be decompressed: "
                           f"{zerr.decode('utf-8', 'replace').strip()[-300:]}")
    if tar.returncode not in ok:
        raise ArchiveError(f"{path}: tar exit {tar.returncode}: {' / '.join(lines[-5:])}")
    return lines
