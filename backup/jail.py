"""Where a restore may write: beneath its destination and never through a symlink, whatever
the drive holds (see ``backup.restore``'s docstring for the design). ``Jail`` judges every
member of every segment before tar sees it; ``extract`` runs zstd | judge | tar."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from backup.archive import (
    READ_RECORDS,
    TAR_ATTRS,
    TAR_TIMEOUT,
    ArchiveError,
    big_pipe,
    tar_output,
    target_error,
)
from backup.tarstream import DROP, FORWARD, HOLD, ZERO, Member, StreamError, filter_stream

SHOWN = 1000  # refusal lines kept; beyond, only counted
_O_PATH = getattr(os, "O_PATH", 0o10000000)


class Refused(Exception):
    """A path of the generation that would leave the destination."""


def parts(name: bytes) -> list[bytes]:
    """The components of a member name; Refused if it is absolute or climbs out."""
    if name.startswith(b"/"):
        raise Refused("an absolute name")
    got = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in got:
        raise Refused("'..' in the name")
    return got


def shown(name: bytes) -> str:
    """A name from the drive as a person may safely read it: control characters escaped."""
    text = name.decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= 300 else f"{text[:300]}…({len(name)} bytes)"


class Jail:
    """The destination (given by the administrator: followed if it is a symlink) and what
    this restore has decided so far. Symlinks are held back by the judge and made last, so
    while files are written no symlink of the generation exists; one already in the
    destination is found with lstat, each directory once."""

    def __init__(self, dest: Path, *, devices: bool, mounts: Iterable[str]) -> None:
        self.root = os.open(dest, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.devices = devices
        self.mounts = {b"/".join(parts(os.fsencode(m))) for m in mounts if m}
        self.links: set[bytes] = set()  # symlinks (and hard links to them) held back
        self.checked: set[bytes] = set()  # directories found not to be symlinks
        # filesystem prefix -> (type, raw header) of each member held back
        self.held: dict[str, list[tuple[str, bytes]]] = {}
        self.refused: list[str] = []
        self.refused_count = 0
        self.skipped: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # segments are judged in several threads at once

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *_: Any) -> None:
        os.close(self.root)

    def refuse(self, what: str) -> None:
        with self._lock:
            if what in self._seen:  # directories are extracted twice
                return
            self._seen.add(what)
            self.refused_count += 1
            if len(self.refused) < SHOWN:
                self.refused.append(what)

    def directory(self, prefix: str) -> int:
        """An O_PATH descriptor of the folder a filesystem's members go into, made where
        missing, each component opened without following a symlink; Refused otherwise."""
        fd = os.dup(self.root)
        try:
            for comp in parts(os.fsencode(prefix)):
                try:
                    nxt = os.open(comp, _O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY |
                                  os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nxt = os.open(comp, _O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY |
                                  os.O_CLOEXEC, dir_fd=fd)
                except (NotADirectoryError, OSError) as e:
                    raise Refused(f"{shown(comp)} is not a directory there "
                                  f"({e.strerror})") from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def take_back(self, names: Iterable[bytes]) -> int:
        """Remove what tar wrote of ``names`` (beneath the destination; directories stay):
        the files of an archive found damaged. Before any symlink of the generation is made,
        so nothing is followed on the way; the number removed."""
        done = 0
        for name in names:
            try:
                os.unlink(name, dir_fd=self.root)
                done += 1
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                    PermissionError):
                continue  # not written, or a directory (EISDIR, EPERM): left
        return done

    def links_made(self) -> None:
        """The held symlinks now exist: what was checked before may have changed."""
        self.checked.clear()

    def _through_link(self, full: list[bytes], upto: int) -> str | None:
        """Why the first ``upto`` components of ``full`` are not all directories one may
        write into (a symlink of the generation or of the destination), or None."""
        for i in range(1, upto + 1):
            p = b"/".join(full[:i])
            if p in self.links:
                return f"/{shown(p)} is a symlink in this generation"
            if p in self.checked:
                continue
            try:
                st = os.stat(p, dir_fd=self.root, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                return f"/{shown(p)} is a symlink in the destination"
            self.checked.add(p)
        return None

    def judge(self, prefix: str, segment: str, wanted: set[bytes] | None,
              kinds: list[str] | None = None,
              mine: set[bytes] | None = None) -> Callable[[Member], str]:
        """The decision for each member of one segment; the type of each member held is
        appended to ``kinds``, the name (beneath the destination) of each passed to tar
        added to ``mine``. A hard link to a name this segment did not write is held too:
        segments are extracted at the same time, its target may not be there yet."""
        pre = parts(os.fsencode(prefix))
        at = f"/{prefix}/" if prefix else "/"
        mine = set() if mine is None else mine  # what this segment forwarded
        kinds = [] if kinds is None else kinds

        def decide(m: Member) -> str:
            try:
                got = parts(m.name)
            except Refused as e:
                self.refuse(f"refused {at}{shown(m.name.lstrip(b'/'))} (segments/{segment}): "
                            f"{e}")
                return DROP
            rel = b"/".join(got)
            if wanted is not None and rel not in wanted:
                return DROP
            name = f"{at}{shown(rel)}"
            full = pre + got
            why = None if got or m.type == "5" else "it names the destination itself"
            why = why or self._through_link(full, len(full) - 1)
            to_link = later = False
            if why is None and m.type == "1":
                try:
                    target = pre + parts(m.link)
                    why = self._through_link(target, len(target) - 1)
                    to_link = b"/".join(target) in self.links
                    later = b"/".join(target) not in mine
                except Refused as e:
                    why = f"a hard link to {shown(m.link)}: {e}"
            key = b"/".join(full)
            if why is None and m.type == "2" and any(
                    key == mnt or mnt.startswith(key + b"/") for mnt in self.mounts):
                why = "a symlink over a filesystem's mount point"
            if why is not None:
                self.refuse(f"refused {name} (segments/{segment}): {why}")
                return DROP
            if m.type in "34" and not self.devices:
                with self._lock:
                    self.skipped.append(name)
                return DROP
            if m.type == "2" or to_link:
                self.links.add(key)
                kinds.append(m.type)
                return HOLD
            if later:
                kinds.append(m.type)
                return HOLD
            mine.add(key)
            return FORWARD

        return decide


def _argv(fd: int) -> list[str]:
    return ["tar", "--extract", "--file=-", *TAR_ATTRS, "--same-owner", "--same-permissions",
            f"--directory=/proc/self/fd/{fd}"]


class Mismatch(ArchiveError):
    """An archive whose bytes, read while it was extracted, do not have its sha256."""

    def __init__(self, path: str, why: str | None = None) -> None:
        super().__init__(why or f"{path}: damaged (sha256 differs)")
        self.path = path


CHUNK_READ = 4 << 20  # an archive hashed while it is extracted is read in pieces this big


class _Feeder:
    """A thread reading the archive ``path`` once into zstd's stdin, hashing every byte on
    the way; once zstd has stopped reading (it found the damage, or tar ended) the rest is
    still hashed, so a damaged archive is always told as such."""

    def __init__(self, path: str, zstd: subprocess.Popen[bytes]) -> None:
        assert zstd.stdin is not None
        self.path, self.sink, self.h = path, zstd.stdin, hashlib.sha256()
        zstd.stdin = None  # the thread closes it; Popen's exit must not flush it meanwhile
        big_pipe(self.sink.fileno())
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sink: Any = self.sink
        try:
            with open(self.path, "rb", buffering=0) as src:
                while chunk := src.read(CHUNK_READ):
                    self.h.update(chunk)
                    if sink is not None:
                        try:
                            sink.write(chunk)
                        except (BrokenPipeError, ValueError):
                            sink = None
        except OSError as e:
            self.error = e
        finally:
            if sink is not None:
                with contextlib.suppress(OSError):
                    sink.close()

    def check(self, sha256: str) -> None:
        """The error reading the archive, else a Mismatch if its bytes are not ``sha256``."""
        self.thread.join(TAR_TIMEOUT)
        if self.error is not None:
            raise target_error(self.path, self.error)
        if self.thread.is_alive():
            raise ArchiveError(f"{self.path}: reading it took longer than {TAR_TIMEOUT:.0f} s")
        if self.h.hexdigest() != sha256:
            raise Mismatch(self.path)


def extract(path: str, fd: int, judge: Callable[[Member], str],
            sha256: str | None = None) -> tuple[list[bytes], str, list[str]]:
    """zstd -d ``path`` | judge | tar -x into the folder ``fd``: the held headers, why the
    stream was cut short ("" if it was not), tar's messages. With ``sha256`` the archive is
    read here once, hashed on its way into zstd, and a Mismatch raised (before any other
    error: damage is what made zstd or tar fail) if it is not what was read; what tar
    wrote of it is then still there, for the caller to take away."""
    env = dict(os.environ, LC_ALL="C")
    result: dict[str, Any] = {"held": [], "error": ""}
    with subprocess.Popen(["zstd", "-dc", "-q", *([] if sha256 else [path])],
                          stdin=subprocess.PIPE if sha256 else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as zstd:
        assert zstd.stdout is not None and zstd.stderr is not None
        feeder = _Feeder(path, zstd) if sha256 else None
        rfd, wfd = os.pipe()
        big_pipe(zstd.stdout.fileno())  # fewer, larger reads and writes through here
        big_pipe(wfd)
        try:
            tar = subprocess.Popen([*_argv(fd)[:3], *READ_RECORDS, *_argv(fd)[3:]],
                                   stdin=rfd, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, pass_fds=(fd,))
        except BaseException:
            os.close(wfd)
            zstd.kill()  # nothing reads it: its exit is not waited for in vain
            raise
        finally:
            os.close(rfd)
        source = zstd.stdout

        def work() -> None:
            try:
                result["held"] = filter_stream(source.fileno(), wfd, judge)
            except StreamError as e:
                result["error"] = str(e)
            except BrokenPipeError:
                pass  # tar ended early; its exit status and message say why
            except BaseException as e:
                result["crash"] = e
            finally:
                os.close(wfd)
                source.close()

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        out = tar_output(tar, zstd, path)
        worker.join(60)
        zerr = zstd.stderr.read()
        zstd.wait(60)
    if feeder is not None and sha256:
        feeder.check(sha256)
    if "crash" in result:
        raise result["crash"]
    lines = out.decode("utf-8", "replace").splitlines()
    if zstd.returncode != 0 and not result["error"]:
        raise ArchiveError(f"{path}: cannot be decompressed: "
                           f"{zerr.decode('utf-8', 'replace').strip()[-300:]}")
    if tar.returncode != 0:
        raise ArchiveError(f"{path}: tar exit {tar.returncode}: {' / '.join(lines[-5:])}")
    return result["held"], result["error"], lines


def make_held(headers: list[bytes], fd: int) -> list[str]:
    """The held symlinks (and hard links to them) in one tar run; tar's complaints."""
    data = b"".join(headers) + ZERO + ZERO
    data += bytes(-len(data) % 10240)
    done = subprocess.run(_argv(fd), input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=dict(os.environ, LC_ALL="C"),
                          pass_fds=(fd,), timeout=TAR_TIMEOUT, check=False)
    lines = done.stdout.decode("utf-8", "replace").splitlines()
    return lines if done.returncode != 0 else []
