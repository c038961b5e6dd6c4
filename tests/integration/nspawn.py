"""Test support: boot a real systemd (as PID 1) in a systemd-nspawn container.

``build_rootfs()`` builds once (cached, flock-guarded, atomically renamed into place) a
Debian minbase tree (bookworm unless another suite is named) with systemd, dbus, postfix
and Debian's python3 plus steward's dependencies; ``mount_overlay()`` gives a throwaway
writable view of it (tests/py39root.py chroots into one).  ``Container`` boots it; the
host reaches it via ``nsenter``.

Keeping the cache pristine: ``--volatile=overlay`` works here, but its tmpfs upper layer
lives only in nspawn's private mount namespace, so units could only be injected before
boot by bind mounts (read-only, not removable inside; binding a ``*.wants`` dir hides
the rootfs's entries).  So each Container mounts its own overlayfs (lower = cache,
upper/work = fresh temp dir) and boots the merged dir with ``-D``: instant, several
containers per cache (unique ``--machine``), units / wants symlinks / a fresh machine-id
(avoids first-boot ``preset-all``) go into the upper layer before boot, and ``.root``
is writable from the host.  ``stop()`` powers off, unmounts and deletes it all.
If the test process is SIGKILLed, nspawn still gets SIGTERM (parent-death signal) and
powers off, but ``/tmp/steward-nspawn-*/merged`` stays mounted: umount it by hand.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import final

log = logging.getLogger(__name__)

SUITE = "bookworm"
FORMAT_VERSION = 1  # bump whenever the build recipe changes, to invalidate old caches
BUILD_TIMEOUT = 1200.0
DEFAULT_PACKAGES: tuple[str, ...] = (
    "systemd", "systemd-sysv", "dbus", "python3", "postfix", "python3-psutil",
    "python3-dnspython", "python3-requests", "python3-jinja2", "python3-apscheduler",
    "python3-pyudev", "python3-jeepney", "monit", "procps",
)
_DEBCONF = ("postfix postfix/main_mailer_type select Local only",
            "postfix postfix/mailname string steward-test.localdomain")
# Children get SIGTERM if the thread that started them dies (even by SIGKILL): mmdebstrap
# then undoes its mounts, nspawn powers the container off.
_PDEATHSIG = ("setpriv", "--pdeathsig", "TERM")
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C", "HOME": "/root", "TERM": "dumb"}


def nspawn_available() -> str | None:
    """Return a reason to skip container tests, or None if they can run."""
    if os.geteuid() != 0:
        return "nspawn integration tests need root"
    missing = [t for t in ("systemd-nspawn", "mmdebstrap", "nsenter", "setpriv", "mount")
               if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def cache_dir() -> Path:
    env = os.environ.get("STEWARD_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "steward-tests"


def _run(argv: Sequence[str], timeout: float, check: bool = True,
         ) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", argv)
    return subprocess.run(list(argv), timeout=timeout, check=check, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below *path* in our mount namespace, deepest first."""
    prefix, found = str(path.resolve()), []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mnt == prefix or mnt.startswith(prefix + "/"):
                found.append(mnt)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """rmtree, but never descend into anything still mounted (e.g. /proc, /dev)."""
    for mnt in _mounts_under(path):
        if _run(["umount", mnt], timeout=30, check=False).returncode:
            _run(["umount", "-l", mnt], timeout=30, check=False)
    left = _mounts_under(path)
    if left:
        raise RuntimeError(f"refusing to delete {path}: still mounted {left}")
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[int]:
    with open(path, "a") as fh:  # closing the file releases the lock
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for {path}") from None
                time.sleep(1)
        yield fh.fileno()


def _run_build(argv: Sequence[str], timeout: float, lock_fd: int) -> None:
    """Run mmdebstrap.  It inherits the build lock (released only when it exits, even if
    we die first) and writes to a file, not a pipe, so our death cannot SIGPIPE it
    before it undoes its mounts.  On timeout/interrupt its whole process group gets
    SIGTERM: mmdebstrap itself defers signals while apt runs, but apt/dpkg do not."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([*_PDEATHSIG, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, pass_fds=(lock_fd,),
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except BaseException:
            for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
                    break
            raise
        if proc.returncode:
            out.seek(0)
            tail = out.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{tail}")


def build_rootfs(packages: Sequence[str] = DEFAULT_PACKAGES, suite: str = SUITE) -> Path:
    """Return the cached Debian *suite* rootfs containing *packages*, building it if needed."""
    pkgs = sorted(set(packages))
    key = hashlib.sha256(f"{FORMAT_VERSION}:{suite}:{','.join(pkgs)}".encode()).hexdigest()
    base, name = cache_dir(), f"rootfs-{key[:12]}"
    final = base / name
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with _locked(base / f"{name}.lock", BUILD_TIMEOUT + 120) as lock_fd:
        if final.is_dir():  # another process built it while we waited
            return final
        for stale in base.glob(f".{name}.partial-*"):  # we hold the lock: all stale
            log.info("removing stale partial build %s", stale)
            _remove_tree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=base))
        log.info("building %s rootfs %s with %s", suite, final, pkgs)
        started = time.monotonic()
        debconf = " ".join(f"'{line}'" for line in _DEBCONF)
        seed = f"printf '%s\\n' {debconf} | chroot \"$1\" debconf-set-selections"
        try:
            _run_build(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(pkgs),
                        f"--essential-hook={seed}",
                        '--customize-hook=echo steward-test > "$1/etc/hostname"',
                        suite, str(tmp)], BUILD_TIMEOUT, lock_fd)
            tmp.chmod(0o755)  # mkdtemp made it 0700 and it becomes the container's /
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        log.info("rootfs built in %.1f s", time.monotonic() - started)
    return final


def mount_overlay(lower: Path, tmp: Path) -> Path:
    """Mount an overlay of the read-only *lower* at ``tmp/merged`` (upper layer
    ``tmp/upper``, which may already hold files) and return it; ``_remove_tree(tmp)``
    unmounts and deletes it all."""
    upper, work, merged = tmp / "upper", tmp / "work", tmp / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], timeout=30)
    return merged


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted at or below *path*, then delete it."""
    _remove_tree(path)


@final
class Container:
    """A booted systemd container on a throwaway overlay of *rootfs* (context manager)."""

    def __init__(self, rootfs: Path | str, units: Mapping[str, str] | None = None,
                 enable: Sequence[str] = (), boot_timeout: float = 60.0,
                 stop_timeout: float = 20.0, binds: Mapping[str, str] | None = None) -> None:
        self.rootfs = Path(rootfs)
        self.binds = dict(binds or {})  # host dir -> in-container path (--bind)
        self.units = dict(units or {})  # unit name -> unit file text, in /etc/systemd/system
        self.enable = list(enable)  # get a multi-user.target.wants symlink
        self.boot_timeout, self.stop_timeout = boot_timeout, stop_timeout
        self.machine = f"steward-{uuid.uuid4().hex[:10]}"
        self.pid = 0  # the container's PID 1 as seen from the host
        self.root: Path | None = None  # merged overlay; writes here appear inside
        self._tmp: Path | None = None
        self._dev_ino = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def systemctl_argv(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-a", "systemctl"]

    def run(self, argv: Sequence[str], timeout: float = 30,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run *argv* inside the container (all namespaces, clean env with LC_ALL=C)."""
        full = ["nsenter", "-t", str(self.pid), "-a", *argv]
        log.debug("run in %s: %s", self.machine, full)
        return subprocess.run(full, timeout=timeout, check=check, text=True,
                              capture_output=True, env=_ENV, stdin=subprocess.DEVNULL)

    def write_file(self, path: str, text: str, mode: int = 0o644) -> Path:
        """Create or replace the in-container absolute *path* through the overlay."""
        if self.root is None:
            raise RuntimeError("container not started")
        dest = self.root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        dest.chmod(mode)
        return dest

    def diagnostics(self) -> str:
        """nspawn's output plus the container's journal tail, for failure messages."""
        text = ""
        with contextlib.suppress(OSError):
            if self._tmp is not None:
                text = (self._tmp / "console.log").read_text(errors="replace")[-2000:]
        if self.pid:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                text += self.run(["journalctl", "-b", "-n", "40", "--no-pager"],
                                 timeout=10, check=False).stdout
        return text

    def start(self) -> None:
        tmp = self._tmp = Path(tempfile.mkdtemp(prefix="steward-nspawn-"))
        try:
            self._prepare(tmp)
            with open(tmp / "console.log", "wb") as console:  # the child keeps its own fd
                self._proc = subprocess.Popen(
                    [*_PDEATHSIG, "systemd-nspawn", "-D", str(self.root),
                     f"--machine={self.machine}", "--register=no", "--keep-unit",
                     "--private-network", *(f"--bind={h}:{c}" for h, c in self.binds.items()),
                     "-b", "--console=pipe"],  # pipe: no console-getty
                    stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self._wait_booted(time.monotonic() + self.boot_timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare(self, tmp: Path) -> None:
        upper = tmp / "upper"
        unit_dir = upper / "etc/systemd/system"
        wants = unit_dir / "multi-user.target.wants"
        wants.mkdir(parents=True)
        (upper / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        for name, text in self.units.items():  # names may be drop-ins: "x.service.d/y.conf"
            (unit_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (unit_dir / name).write_text(text)
        for name in self.enable:
            target = f"/etc/systemd/system/{name}"
            if name not in self.units and (self.rootfs / "lib/systemd/system" / name).exists():
                target = f"/lib/systemd/system/{name}"
            (wants / name).symlink_to(target)
        self.root = merged = mount_overlay(self.rootfs, tmp)
        st = merged.stat()
        self._dev_ino = f"{st.st_dev}:{st.st_ino}"  # names nspawn's image lock file

    def _wait_booted(self, deadline: float) -> None:
        state = "no PID 1 yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited early:\n{self.diagnostics()}")
            self.pid = self.pid or self._find_init()
            if self.pid:
                res = self.run(["systemctl", "is-system-running"], timeout=10, check=False)
                state = res.stdout.strip() or res.stderr.strip()
                if state in ("running", "degraded"):
                    log.info("container %s up, PID 1 = %d: %s", self.machine, self.pid, state)
                    return
            time.sleep(0.25)
        raise TimeoutError(f"container did not boot ({state}):\n{self.diagnostics()}")

    def _find_init(self) -> int:
        """The nspawn child once it has exec'd systemd (no intermediate process)."""
        assert self._proc is not None
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _ppid(int(entry.name)) == self._proc.pid:
                with contextlib.suppress(OSError):
                    if (entry / "comm").read_text().strip() == "systemd":
                        return int(entry.name)
        return 0

    def stop(self) -> None:
        """Orderly poweroff (SIGTERM to nspawn -> SIGRTMIN+3 to PID 1), SIGKILL on timeout,
        then unmount and delete the overlay.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("container %s did not power off in time; killing", self.machine)
                if self.pid and _ppid(self.pid) == proc.pid:
                    os.kill(self.pid, signal.SIGKILL)  # takes the whole PID namespace along
                proc.kill()
                proc.wait(timeout=10)
                run_dir = Path("/run/systemd/nspawn")  # clean what a killed nspawn leaves
                with contextlib.suppress(OSError):
                    (run_dir / f"locks/inode-{self._dev_ino}").unlink()
                with contextlib.suppress(OSError):
                    (run_dir / f"propagate/{self.machine}").rmdir()
            log.info("container %s stopped, nspawn exit %s", self.machine, proc.returncode)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            _remove_tree(tmp)
        self.root, self.pid = None, 0


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])
