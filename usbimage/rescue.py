"""The rescue system on the steward drive: this host's own kernel and an initramfs that boots
into ``steward restore``.

Choice: Python and steward themselves go into the rescue system, not a separate small runtime.
The restore is then the same code that is tested on the live system (one implementation of
layout, mapping and extraction, not two), and steward's interpreter, stdlib, the tools restore
runs (sfdisk, mkfs.*, lvm, tar, zstd, grub/efibootmgr, ...) and their libraries are copied from
this very host, so they match the kernel and the backed-up system. Cost: ~30 MB more initramfs.

How: the distribution's own tool makes a generic initramfs (``dracut --no-hostonly`` on EL9,
``mkinitramfs`` with MODULES=most on Debian): every storage, USB and filesystem driver, and
udev. Appended to it is a second cpio holding the rescue tree under /steward (binaries with
their ldd closure, ld.so.cache, Python, steward) and /steward/init, which the kernel runs
instead of the distribution's /init (``rdinit=``): it loads drivers with the initramfs's udev,
then chroots into /steward and starts the rescue menu. The drive's data partition is only read
from, so a rescue boot never changes a backup.

Kept in ``boot/steward/`` on the data partition with ``rescue.json``, the stamp: the kernel,
the steward and Python versions. ``refresh`` rebuilds when that stamp differs from this host
(a new kernel was booted, steward was upgraded), else leaves it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.fileio import read_json
from agent.system.commands import CommandError, CommandRunner
from backup.layout import which

FORMAT = 1
HOME = "boot/steward"  # on the data partition
REQUIRED = ("sh", "bash", "mount", "umount", "blkid", "lsblk", "sfdisk", "partx", "wipefs",
            "mkfs.ext4", "mkswap", "tar", "zstd", "chroot", "sync")
OPTIONAL = ("mkfs.xfs", "mkfs.vfat", "mkfs.ext2", "mkfs.ext3", "lvm", "efibootmgr", "modprobe",
            "udevadm", "ls", "cat", "cp", "mv", "rm", "mkdir", "ln", "dmesg", "sleep", "less",
            "vi", "grep", "sed", "head", "tail", "wc", "df", "free", "ps", "losetup", "e2fsck",
            "xfs_repair", "fsck", "fsck.ext4", "blockdev", "getfattr", "getcap", "sha256sum",
            "cpio", "findmnt", "kill", "stty", "setfiles")
# Kernel modules a restore needs after the drivers are up: filesystems, code pages, LVM.
RESTORE_MODULES = ("vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8", "ext4",
                   "xfs", "dm_mod", "efivarfs", "loop")
STEWARD_PACKAGES = ("agent", "checks", "backup", "patch", "usbimage", "actions")
# What a restore imports: the rescue menu, the command line, the restore path.
# restorecli imports these where used, so they are named here too.
PROBE_IMPORTS = ("agent.cli", "usbimage.rescuemenu", "usbimage.restorecli", "backup.restore",
                 "usbimage.restorefix", "usbimage.restoredisk", "usbimage.restoreplan",
                 "usbimage.detect", "usbimage.drive",
                 # what the entry points copied beside them name: the commands of
                 # `steward --help`, the config tables and the actions
                 "backup.cli", "checks.audit.cli", "patch.cli", "usbimage.cli",
                 "backup.options", "patch.options", "usbimage.options", "actions.journal",
                 "actions.email", "actions.webhook")
_SKIP_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
                "pydoc_data", "site-packages", "dist-packages", "config-3", "venv"}
_LDD = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")
T_BUILD = 1800.0
STAGE1 = """#!/bin/sh
# steward rescue, stage 1: PID 1 from the distribution's initramfs (rdinit=/steward/init).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
echo "steward rescue: loading drivers"
for u in /lib/systemd/systemd-udevd /usr/lib/systemd/systemd-udevd /sbin/udevd; do
    if [ -x "$u" ]; then
        "$u" --daemon --resolve-names=never
        udevadm trigger --type=subsystems --action=add
        udevadm trigger --type=devices --action=add
        udevadm settle --timeout=60
        break
    fi
done
for m in usb_storage uas sd_mod xhci_pci ehci_pci uhci_hcd ohci_pci virtio_pci virtio_blk \\
         virtio_scsi nvme ahci ata_piix dm_mod ext4 xfs vfat nls_cp437 nls_ascii \\
         nls_iso8859_1 nls_utf8 efivarfs loop; do
    modprobe -q "$m" 2>/dev/null
done
for d in proc sys dev dev/pts run; do
    mkdir -p "/steward/$d" && mount -o bind "/$d" "/steward/$d"
done
if command -v chroot >/dev/null 2>&1; then
    exec chroot /steward /usr/bin/steward-rescue
fi
exec /steward/usr/sbin/chroot /steward /usr/bin/steward-rescue
"""
LAUNCHER = """#!/bin/sh
export PYTHONPATH=/opt/steward/lib PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export TERM="${TERM:-vt100}" LANG=C.UTF-8
# what a restore mounts or builds, from the rescue tree's own modules (the distribution's
# initramfs may lack them: Debian's MODULES=most has no vfat)
for m in @MODULES@; do modprobe -q "$m" 2>/dev/null; done
exec /usr/bin/python3 -m usbimage.rescuemenu "$@"
""".replace("@MODULES@", " ".join(RESTORE_MODULES))
STEWARD = """#!/bin/sh
export PYTHONPATH=/opt/steward/lib
exec /usr/bin/python3 -m agent "$@"
"""


class RescueError(Exception):
    """The rescue system could not be built; the message says what is missing."""


def kernel_release() -> str:
    return platform.release()


def kernel_image(release: str) -> Path:
    for p in (f"/boot/vmlinuz-{release}", f"/lib/modules/{release}/vmlinuz",
              f"/usr/lib/modules/{release}/vmlinuz"):
        if os.path.isfile(p):
            return Path(p)
    raise RescueError(f"no kernel image for the running kernel {release} (/boot/vmlinuz-"
                      f"{release})")


def stamp(release: str) -> dict[str, Any]:
    image = kernel_image(release)
    st = image.stat()
    return {"format": FORMAT, "kernel": release, "kernel_size": st.st_size,
            "kernel_mtime": int(st.st_mtime), "steward": __version__,
            "python": platform.python_version()}


def stale(data_root: Path, want: dict[str, Any]) -> str | None:
    """Why the rescue system on the drive must be (re)built; None when it is current."""
    home = data_root / HOME
    try:
        have = read_json(home / "rescue.json")
    except (OSError, ValueError):
        return "there is no rescue system on the drive yet"
    if not all((home / f).is_file() for f in ("vmlinuz", "initrd.img")):
        return "the rescue system on the drive is incomplete"
    for key, what in (("kernel", "the kernel"), ("kernel_mtime", "the kernel image"),
                      ("steward", "steward"), ("python", "Python"), ("format", "the format")):
        if have.get(key) != want.get(key):
            return f"{what} changed ({have.get(key)} -> {want.get(key)})"
    return None


def _copy(src: str, tree: Path) -> None:
    """``src`` (dereferenced) at the same path inside ``tree``."""
    dest = tree / src.lstrip("/")
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest, follow_symlinks=True)


def _libs(files: Iterable[str], runner: CommandRunner) -> set[str]:
    """The shared libraries (and the dynamic loader) ``files`` need, by ldd."""
    ldd = which("ldd")
    if ldd is None:
        raise RescueError("ldd is not installed (glibc's ldd, package glibc-common/libc-bin)")
    out: set[str] = set()
    for f in files:
        try:
            cp = runner.run([ldd, f], timeout=60, ok_codes=(0, 1))
        except CommandError:
            continue
        out |= {m.group(1) for m in map(_LDD.search, cp.stdout.splitlines()) if m}
    return out


def _top_dirs(tree: Path) -> None:
    """bin, sbin, lib, lib64 as on this host: merged-/usr symlinks (made relative) or dirs."""
    for name in ("bin", "sbin", "lib", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            link = os.readlink(host)
            rel = os.path.relpath(link, "/") if link.startswith("/") else link
            (tree / rel).mkdir(parents=True, exist_ok=True)
            (tree / name).symlink_to(rel)
        else:
            (tree / name).mkdir(exist_ok=True)


def _python_modules() -> dict[str, str]:
    """Top-level module name -> file or package dir of what the rescue path imports, outside
    the standard library (steward's packages and their third-party imports)."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(PROBE_IMPORTS)!r}: importlib.import_module(m)\n"
            "print(json.dumps({n: getattr(m, '__file__', None) for n, m in "
            "list(sys.modules.items()) if '.' not in n}))")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, check=False,
                          cwd=str(Path(__file__).resolve().parent.parent))
    if done.returncode:
        raise RescueError(f"steward's modules do not import: {done.stderr.strip()[-500:]}")
    stdlib = {os.path.realpath(p) for p in (sysconfig.get_paths()["stdlib"],
                                            sysconfig.get_paths()["platstdlib"])}
    out = {}
    for name, file in json.loads(done.stdout).items():
        if not file:
            continue
        real = os.path.realpath(file)
        if any(real.startswith(s + os.sep) for s in stdlib) and "-packages" not in real:
            continue
        out[name] = os.path.dirname(real) if os.path.basename(real).startswith(
            "__init__.") else real
    missing = [p for p in STEWARD_PACKAGES[:2] if p not in out]
    if missing:
        raise RescueError(f"cannot find steward's packages {missing}")
    return out


def _metadata(lib: Path) -> None:
    """steward's entry points (its commands, checks, sources...) beside its packages: without
    them ``steward restore`` in the rescue shell would not exist."""
    from agent.entrypoints import metadata_dir

    found = metadata_dir("steward")
    if found is None:
        raise RescueError("cannot find steward's installed metadata (entry_points.txt); "
                          "install steward (pip install or the RPM) before building the rescue")
    info = lib / f"steward-{__version__}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    meta = "METADATA" if found.endswith(".dist-info") else "PKG-INFO"
    for src, dest in ((meta, "METADATA"), ("entry_points.txt", "entry_points.txt")):
        if os.path.exists(os.path.join(found, src)):
            shutil.copy2(os.path.join(found, src), info / dest)


def _ignore_stdlib(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in _SKIP_STDLIB or n.startswith("config-3")]


def _modules(tree: Path, release: str, runner: CommandRunner) -> list[str]:
    """RESTORE_MODULES and what they depend on (modprobe --show-depends), with a modules.dep
    of their own (depmod -b), for the rescue tree's modprobe."""
    modprobe, depmod = which("modprobe"), which("depmod")
    base = Path(f"/lib/modules/{release}")
    if modprobe is None or depmod is None or not base.is_dir():
        return [f"kernel modules for the restore not added (no kmod or no {base})"]
    files: list[str] = []
    for name in RESTORE_MODULES:
        cp = runner.run([modprobe, "--show-depends", "--set-version", release, name],
                        timeout=60, ok_codes=range(256))
        files += [line.split()[1] for line in cp.stdout.splitlines()
                  if line.startswith("insmod ") and len(line.split()) > 1]
    dest = tree / "usr/lib/modules" / release
    for f in dict.fromkeys(files):
        target = dest / os.path.relpath(os.path.realpath(f), os.path.realpath(base))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (base / name).is_file():
            shutil.copy2(base / name, dest / name)
    runner.run([depmod, "-b", str(tree / "usr"), release], timeout=120)
    return []


def build_tree(tree: Path, runner: CommandRunner, say: Callable[[str], None],
               release: str | None = None) -> list[str]:
    """The rescue root under ``tree`` for kernel ``release`` (default: the running one);
    returns notes (optional tools that are missing)."""
    release = release or kernel_release()
    notes = []
    _top_dirs(tree)
    for d in ("etc", "proc", "sys", "dev", "run", "tmp", "mnt", "root", "opt/steward/lib",
              "usr/bin", "usr/sbin"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    missing = [t for t in REQUIRED if which(t) is None]
    if missing:
        raise RescueError(f"not installed, needed in the rescue system: {', '.join(missing)}")
    binaries = [str(which(t)) for t in REQUIRED]
    absent = [t for t in OPTIONAL if which(t) is None]
    binaries += [str(which(t)) for t in OPTIONAL if which(t) is not None]
    if absent:
        notes.append(f"not in the rescue system (not installed here): {', '.join(absent)}")
    python = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    binaries.append(python)
    say("rescue: copying Python and the tools")
    for b in binaries:
        _copy(b, tree)
    (tree / "usr/bin/python3").unlink(missing_ok=True)
    (tree / "usr/bin/python3").symlink_to(python)
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib"):
        src = paths[key]
        dest = tree / src.lstrip("/")
        if not dest.exists():
            shutil.copytree(src, dest, symlinks=True, ignore=_ignore_stdlib)
    modules = _python_modules()
    lib = tree / "opt/steward/lib"
    for name, src in modules.items():
        if os.path.isdir(src):
            shutil.copytree(src, lib / name, symlinks=False, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "tests"))
        else:
            shutil.copy2(src, lib / os.path.basename(src))
    _metadata(lib)
    sos = [str(p) for p in tree.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for f in sorted(_libs([*binaries, *sos], runner)):
        _copy(f, tree)
    notes += _modules(tree, release, runner)
    _etc(tree, runner)
    for rel, text in (("init", STAGE1), ("usr/bin/steward-rescue", LAUNCHER),
                      ("usr/bin/steward", STEWARD)):
        (tree / rel).write_text(text)
        (tree / rel).chmod(0o755)
    return notes


def _etc(tree: Path, runner: CommandRunner) -> None:
    etc = tree / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndisk:x:6:\n")
    (etc / "fstab").write_text("")
    (etc / "os-release").write_text('NAME="steward rescue"\nID=steward-rescue\n')
    if os.path.isfile("/etc/ld.so.conf"):
        shutil.copy2("/etc/ld.so.conf", etc / "ld.so.conf")
    if os.path.isdir("/etc/ld.so.conf.d"):
        shutil.copytree("/etc/ld.so.conf.d", etc / "ld.so.conf.d", dirs_exist_ok=True)
    (etc / "lvm").mkdir(exist_ok=True)
    (etc / "lvm/lvm.conf").write_text(
        "devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }\n"
        "activation { udev_sync = 0 udev_rules = 0 }\n")
    ldconfig = which("ldconfig")
    if ldconfig:
        runner.run([ldconfig, "-r", str(tree)], timeout=120, ok_codes=(0, 1))


def distro_initramfs(release: str, out: Path, runner: CommandRunner) -> str:
    """A generic initramfs made by the distribution's tool; returns what made it."""
    dracut = which("dracut")
    if dracut:
        runner.run([dracut, "--no-hostonly", "--no-hostonly-cmdline", "--force", "--kver",
                    release, str(out)], timeout=T_BUILD)
        return "dracut --no-hostonly"
    mkinitramfs = which("mkinitramfs")
    installed = Path(f"/boot/initrd.img-{release}")
    if mkinitramfs is not None and generic_initrd(installed, release):
        # The rescue never runs its /init (rdinit=), so nothing host-specific in it matters;
        # reusing it saves minutes of compression on a slow machine.
        shutil.copyfile(installed, out)
        return "mkinitramfs (MODULES=most, the installed one)"
    if mkinitramfs is None:
        raise RescueError("neither dracut nor mkinitramfs is installed: cannot make the "
                          "rescue initramfs")
    with tempfile.TemporaryDirectory(prefix="steward-initramfs-") as conf:
        shutil.copytree("/etc/initramfs-tools", conf, dirs_exist_ok=True, symlinks=True)
        path = Path(conf) / "initramfs.conf"
        text = path.read_text() if path.exists() else ""
        text = re.sub(r"^MODULES=.*$", "", text, flags=re.MULTILINE) + "\nMODULES=most\n"
        path.write_text(text)
        runner.run([mkinitramfs, "-d", conf, "-o", str(out), release], timeout=T_BUILD)
    return "mkinitramfs (MODULES=most)"


def generic_initrd(image: Path, release: str, conf: Path = Path("/etc/initramfs-tools")) -> bool:
    """Is Debian's installed initrd for ``release`` generic (MODULES=most, the last setting in
    initramfs.conf and conf.d wins) and newer than the kernel's modules?"""
    modules = ""
    for f in [conf / "initramfs.conf", *sorted((conf / "conf.d").glob("*"))]:
        try:
            for m in re.finditer(r"^\s*MODULES=(\w+)", f.read_text(), re.MULTILINE):
                modules = m.group(1)
        except OSError:
            continue
    try:
        deps = Path(f"/lib/modules/{release}/modules.dep").stat().st_mtime
        return modules == "most" and image.stat().st_mtime >= deps
    except OSError:
        return False


def compressor(release: str) -> list[str]:
    """zstd when the kernel unpacks it (CONFIG_RD_ZSTD), else gzip."""
    try:
        config = Path(f"/boot/config-{release}").read_text()
    except OSError:
        config = ""
    if "CONFIG_RD_ZSTD=y" in config and which("zstd"):
        return ["zstd", "-q", "-T0", "-6", "-c"]
    return ["gzip", "-6", "-c"]


def cpio(tree: Path, out: Path, compress: list[str]) -> None:
    """``tree`` as /steward in a newc cpio (owned by root), compressed, appended to ``out``."""
    names = ["steward"]
    for top, dirs, files in os.walk(tree):
        rel = os.path.relpath(top, tree)
        base = "steward" if rel == "." else f"steward/{rel}"
        names += [f"{base}/{n}" for n in sorted(dirs) + sorted(files)]
        dirs.sort()
    parent = tree.parent
    if tree.name != "steward":
        raise RescueError("the rescue tree must be a folder named steward")
    with open(out, "ab") as sink:
        pack = subprocess.Popen(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        squeeze = subprocess.Popen(compress, stdin=pack.stdout, stdout=sink)
        assert pack.stdin is not None and pack.stdout is not None
        pack.stdout.close()
        pack.stdin.write(("\n".join(names) + "\n").encode("utf-8", "surrogateescape"))
        pack.stdin.close()
        if pack.wait(T_BUILD) or squeeze.wait(T_BUILD):
            raise RescueError(f"packing the rescue tree failed (cpio {pack.returncode}, "
                              f"{compress[0]} {squeeze.returncode})")
