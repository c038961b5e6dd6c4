"""Python 3.9 with EL9's library versions: a Debian bullseye root.

Bullseye's Python 3.9.2 with its own python3-* packages (setuptools 52, jinja2 2.11.3,
psutil 5.8.0, requests 2.25.1, pyudev 0.22, jeepney 0.6.0) is the
nearest Debian gets to EL9's stack.  What bullseye lacks comes from the Python registry as
wheels, at EL9's version: tomli 2.0.1 (no python3-tomli in bullseye) and dnspython 2.1.0
(bullseye has 2.0.0, EL9 2.1.0).  The test tools (pytest, hypothesis, ...) are wheels too.

``build_root()`` is ``tests.integration.nspawn.build_rootfs`` for bullseye (cached,
flock-guarded, atomically renamed); ``wheels()`` downloads the wheels once into the same
cache.  ``Root`` mounts a throwaway overlay of the rootfs, copies the source tree to
``/src``, installs steward there the way an EL9 RPM build does (the root's own pip and
setuptools, no build isolation, no index) and runs commands in it by ``chroot`` inside a
private mount namespace (``unshare``) with /proc, /sys, /dev and a fresh /tmp, so
nothing mounted in there outlives the command.

``python -m tests.py39root [PYTEST ARGS]`` runs the fast suite (``-m "not slow"``) there
under 3.9; .ci/run does that through ``./bootstrap test``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.fstree import loop_fs
from tests.integration import nspawn

REPO = Path(__file__).resolve().parent.parent
SUITE = "bullseye"
PACKAGES: tuple[str, ...] = (
    "python3", "python3-pip", "python3-setuptools", "python3-wheel", "python3-jinja2",
    "python3-psutil", "python3-requests", "python3-dnspython", "python3-pyudev",
    "python3-jeepney", "openssl", "ca-certificates",
    # to boot it under systemd-nspawn, and what the tests and steward's checks drive
    "systemd", "systemd-sysv", "dbus", "procps", "iproute2", "acl", "libcap2-bin", "zstd",
    "e2fsprogs", "util-linux", "mount", "postfix", "fdisk", "dosfstools", "xfsprogs",
    "btrfs-progs", "lvm2", "gdisk", "mtools", "cpio", "tar",
)
# Not in bullseye, or older there than in EL9: installed by pip at EL9's version.
RUNTIME_WHEELS: tuple[str, ...] = ("tomli==2.0.1", "dnspython==2.1.0")
# The test tools at versions that still support 3.9, with their dependencies (all pinned,
# installed with --no-deps so that nothing replaces a distribution package).
TEST_WHEELS: tuple[str, ...] = (
    "pytest==8.4.2", "pluggy==1.6.0", "iniconfig==2.1.0", "packaging==26.3",
    "exceptiongroup==1.3.2", "pygments==2.21.0", "typing_extensions==4.16.0",
    "hypothesis==6.141.1", "attrs==26.1.0", "sortedcontainers==2.4.0",
    "jsonschema==4.25.1", "jsonschema-specifications==2025.9.1", "referencing==0.36.2",
    "rpds-py==0.27.1", "tomli-w==1.2.0", "prometheus-client==0.26.0", "aiosmtpd==1.4.6",
    "atpublic==6.0.2",
)
WHEELS_FORMAT = 1
TMP_MB = 4096  # sparse
DOWNLOAD_TIMEOUT = 600.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Run as $0 ROOT TMP CMD...: mounts in the new mount namespace, then chroot.  /tmp is the
# root of a fresh ext4 on a loop device (TMP, mounted on the host): backup takes whole local
# filesystems only, not a tmpfs nor a bind mount of a directory.
_ENTER = """r=$1; t=$2; shift 2
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount --bind "$t" "$r/tmp"
mount -t tmpfs -o mode=755 tmpfs "$r/run"
exec chroot "$r" "$@"
"""
_SKIP_COPY = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
              ".hypothesis", "build", "dist"}


# What the 3.9 stage leaves out, and why.  tests/usb drives loop disks through the host's
# /dev and /sys with the kernel's uevents: in a chroot sharing them with whatever else runs on
# the machine it sees other jobs' drives (and its partitions under other numbers); it is
# Python code like the rest, but what it tests there is the machine, not the interpreter.
EXCLUDE: tuple[str, ...] = (
    "--ignore=tests/usb",
    # captures this machine's layout: / of a chroot is an overlay, not a local filesystem
    "--deselect=tests/backup/test_layout.py::test_capture_this_machine",
)


def unavailable() -> str | None:
    """A reason the bullseye root cannot be built or entered here, or None."""
    if os.geteuid() != 0:
        return "the Python 3.9 root needs root (mmdebstrap, mount, chroot)"
    missing = [t for t in ("mmdebstrap", "unshare", "chroot", "mount", "setpriv")
               if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def build_root() -> Path:
    """The cached bullseye rootfs (read-only by convention: use ``Root`` to change it)."""
    return nspawn.build_rootfs(PACKAGES, suite=SUITE)


def wheels() -> Path:
    """The cached folder of every wheel in RUNTIME_WHEELS + TEST_WHEELS (py3.9, manylinux2014),
    downloaded once by this interpreter's pip."""
    pins = sorted(RUNTIME_WHEELS + TEST_WHEELS)
    key = hashlib.sha256(f"{WHEELS_FORMAT}:{','.join(pins)}".encode()).hexdigest()[:12]
    base = nspawn.cache_dir()
    final = base / f"wheels-py39-{key}"
    if final.is_dir():
        return final
    base.mkdir(parents=True, exist_ok=True)
    with nspawn._locked(base / f"{final.name}.lock", DOWNLOAD_TIMEOUT + 60):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=base))
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                            "--disable-pip-version-check", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.9", "--implementation", "cp",
                            "--platform", "manylinux2014_x86_64", "--platform", "any",
                            "-d", str(tmp), *pins],
                           check=True, timeout=DOWNLOAD_TIMEOUT, stdin=subprocess.DEVNULL)
            tmp.chmod(0o755)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _copy_source(src: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in _SKIP_COPY or n.endswith(".egg-info")
                or n.startswith(".venv")}
    shutil.copytree(src, dest, ignore=ignore, symlinks=True)


class Root:
    """A throwaway writable bullseye root with steward installed (context manager).

    ``run()`` executes argv inside it (chroot, private mount namespace, clean env)."""

    def __init__(self, source: Path = REPO, test_tools: bool = True) -> None:
        self.source, self.test_tools = source, test_tools
        self.rootfs = build_root()
        self.wheels = wheels()
        self.path: Path | None = None
        self._tmp: Path | None = None
        self._tmpfs: Path | None = None  # mount point of the ext4 that is /tmp inside
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Root:
        self._tmp = Path(tempfile.mkdtemp(prefix="steward-py39-"))
        try:
            self._tmpfs = self._stack.enter_context(loop_fs("ext4", TMP_MB, self._tmp))
            self._tmpfs.chmod(0o1777)
            self.path = nspawn.mount_overlay(self.rootfs, self._tmp)
            shutil.copytree(self.wheels, self.path / "wheels")
            _copy_source(self.source, self.path / "src")
            self.install()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        tmp, self._tmp, self.path = self._tmp, None, None
        if tmp is not None:
            nspawn._run(["umount", str(tmp / "merged")], timeout=60, check=False)
            self._stack.close()  # the /tmp filesystem and its loop device
            nspawn.remove_tree(tmp)

    def run(self, argv: Sequence[str], timeout: float = 120, check: bool = True,
            cwd: str = "/", env: dict[str, str] | None = None, capture: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        if self.path is None or self._tmpfs is None:
            raise RuntimeError("root not entered")
        full_env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
        full_env.update(env or {})
        argv = ["unshare", "--mount", "--propagation", "private", "--",
                "sh", "-euc", _ENTER, "sh", str(self.path), str(self._tmpfs),
                "env", "-C", cwd, *argv]
        return subprocess.run(argv, timeout=timeout, check=check, text=True,
                              capture_output=capture, env=full_env, stdin=subprocess.DEVNULL)

    def pip_install(self, *args: str) -> None:
        res = self.run(["python3", "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--no-index", "--find-links", "/wheels", *args],
                       timeout=300, check=False)
        if res.returncode:
            raise RuntimeError(f"pip install {' '.join(args)} in the 3.9 root failed:\n"
                               f"{res.stdout[-3000:]}{res.stderr[-3000:]}")

    def install(self) -> None:
        """steward from /src with the root's own setuptools (no build isolation), its
        dependencies from the distribution (pip finds them installed) or /wheels; then the
        test tools, without dependencies so none replaces a distribution package."""
        self.pip_install("--no-build-isolation", "/src")
        if self.test_tools:
            self.pip_install("--no-deps", *TEST_WHEELS)


def main(args: Sequence[str]) -> int:
    reason = unavailable()
    if reason:
        print(f"py39root: cannot run the Python 3.9 suite: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with Root() as root:
        ready = time.monotonic()
        print(f"py39root: bullseye root ready with steward installed in {ready - started:.1f} s",
              file=sys.stderr, flush=True)
        res = root.run(["python3", "-m", "pytest", "-m", "not slow", "-p", "no:cacheprovider",
                        *EXCLUDE, *args], cwd="/src", timeout=1800, check=False, capture=False)
    print(f"py39root: Python 3.9 stage took {time.monotonic() - started:.1f} s "
          f"(pytest exit {res.returncode})", file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
    sys.exit(130)
