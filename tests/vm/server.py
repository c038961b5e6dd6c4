"""A small bootable Debian bookworm "server" disk image, for whole-machine tests under qemu.

``build_server_rootfs()`` is ``tests.integration.nspawn.build_rootfs(SERVER_PACKAGES)``
(cached: a kernel, initramfs-tools, GRUB for BIOS and UEFI, systemd, Debian's python3 with
steward's dependencies and the disk tools).  grub-pc's postinst runs fine in mmdebstrap's
chroot: with ``grub-pc/install_devices`` empty it installs nothing and says so.

``make_server_disk(rootfs, image)`` lays out a raw GPT image::

    1  BIOS boot (EF02)    1 MiB     grub-pc's core.img
    2  ESP (EF00)         64 MiB     vfat, label ESP, /boot/efi (umask=0077)
    3  Linux root (8300)  the rest   ext4, label root, /
    4  Linux LVM (8E00)  256 MiB     left empty; ``SRV_ON_LVM`` (run in a prep boot: the
                                    host has no device-mapper) makes it a PV with /srv on
                                    vgsrv/srv

copies the rootfs in (through ``losetup --offset/--sizelimit``: no partition nodes for
loop devices here), installs steward from a wheel built on the host (no network in the
guest), and adds a marker file with an SELinux label and a file capability plus
``steward-marker.service``, which on a normal boot prints ``MARKER content=... selinux=...
srv=... caps=...`` (``parse_marker()``) and ``MARKER-DONE`` on ttyS0 and powers the
machine off.  The bootloader is not installed yet: ``grub-bios-setup`` must not run on
this host (it lives in grub-pc, whose scripts touch the host's own bootloader), so
``prep_boot()`` does it inside the guest on the first maintenance boot.

``prep_boot(image, usb_image, script)`` boots the image's own kernel directly (qemu
``-kernel``) with ``init=/usr/local/sbin/steward-test-prep``: a bash PID 1 that mounts
the API filesystems, starts udev, waits for the USB disk, mounts /boot/efi, installs GRUB
for BIOS (/dev/vda) and UEFI (removable path, no NVRAM) and runs ``update-grub`` once per
image, runs *script* (printing ``PREP-RC=<status>``), syncs and powers off.  In the
guest the server disk is /dev/vda and the USB disk /dev/sda.  After that the image boots
from its own firmware: ``VM([(image, "virtio")], firmware="bios"|"uefi")``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.integration.nspawn import build_rootfs
from tests.vm.machine import VM, DiskBus, Firmware

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PYTHON_SITE = "usr/local/lib/python3.11/dist-packages"  # bookworm's python3 looks here
PREP_INIT = "/usr/local/sbin/steward-test-prep"
PREP_SCRIPT = "/root/prep-cmd.sh"
GRUB_FLAG = "/var/lib/steward-test/grub-installed"
MARKER_PATH = "/srv/marker.txt"
MARKER_TEXT = "steward-marker"
MARKER_SELINUX = "system_u:object_r:etc_t:s0"
MARKER_CAPS = "cap_net_bind_service+ep"
SERVER_SERIAL = "steward-server"  # the disk's serial number (EL9's LVM would name it by that)
SERVER_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64", "initramfs-tools", "grub-pc", "grub-efi-amd64-bin", "systemd",
    "systemd-sysv", "udev", "kmod", "python3", "python3-psutil", "python3-dnspython",
    "python3-requests", "python3-jinja2", "python3-apscheduler", "python3-pyudev", "zstd",
    "tar", "util-linux", "fdisk", "gdisk", "e2fsprogs", "dosfstools", "mtools", "attr",
    "libcap2-bin", "acl", "procps", "efibootmgr", "python3-jeepney", "lvm2",
)
LVM_SIZE = 256 * MiB  # partition 4, the LVM physical volume at the end of the disk
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C", "HOME": "/root", "TERM": "dumb"}
_PACKAGES_IN_WHEEL = ("agent", "checks", "backup", "patch", "usbimage", "actions")

GRUB_DEFAULTS = """\
# written by tests/vm/server.py: menu and kernel on the serial console, nothing quiet
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""

MARKER_SCRIPT = f"""\
#!/bin/bash
# steward-marker.service: report the marker file on the serial port, then power off.
f={MARKER_PATH}
tty=/dev/ttyS0
label=$(getfattr --absolute-names --only-values -n security.selinux $f 2>&1 | tr -d '\\0')
echo "MARKER content=$(cat $f) selinux=$label srv=$(findmnt -no SOURCE /srv) \\
caps=$(getcap $f 2>&1)" > $tty
echo MARKER-DONE > $tty
systemctl --no-block poweroff
"""

MARKER_UNIT = """\
[Unit]
Description=steward test marker: report /srv/marker.txt on ttyS0, then power off
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/steward-marker
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

# Run in a prep boot: move /srv (the marker) onto an LVM logical volume on partition 4, with
# the devices file on, as EL9 installs LVM: the file lists the PV by an ID of its disk (WWID or
# serial on EL9; Debian's lvm 2.03.16 takes a virtio disk's device name) and its PVID, so a
# restore that gives the PV a new UUID must rewrite the file, or /srv is not found.
SRV_ON_LVM = f"""
sed -i 's/^\\(\\s*\\)# use_devicesfile = .*/\\1use_devicesfile = 1/' /etc/lvm/lvm.conf
lvmconfig devices/use_devicesfile
# pvcreate makes the devices file, with this disk in it
pvcreate -y /dev/vda4 && vgcreate vgsrv /dev/vda4 && lvcreate -y -L 128M -n srv vgsrv
cat /etc/lvm/devices/system.devices
mkfs.ext4 -q -L srv /dev/vgsrv/srv
mkdir -p /mnt/srv && mount /dev/vgsrv/srv /mnt/srv && cp -a /srv/. /mnt/srv/
setfattr -n security.selinux -v {MARKER_SELINUX} /mnt/srv/marker.txt
setcap {MARKER_CAPS} /mnt/srv/marker.txt
umount /mnt/srv && rm -rf /srv/* && mount /dev/vgsrv/srv /srv
echo '/dev/mapper/vgsrv-srv /srv ext4 defaults,nofail,x-systemd.device-timeout=60 0 2' \\
  >> /etc/fstab
getcap /srv/marker.txt && findmnt /srv
"""

PREP_INIT_SCRIPT = f"""\
#!/bin/bash
# PID 1 of a maintenance boot (tests/vm/server.py prep_boot): set up, install GRUB once,
# run {PREP_SCRIPT}, print PREP-RC=<status>, power off.  The initramfs has already
# moved /dev, /proc, /sys and /run here.
export PATH={_ENV["PATH"]} HOME=/root LC_ALL=C TERM=dumb
exec </dev/console >/dev/console 2>&1
fs() {{ mountpoint -q "$3" || mount -t "$1" "$2" "$3"; }}
fs proc proc /proc
fs sysfs sysfs /sys
fs devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
fs devpts devpts /dev/pts
fs tmpfs tmpfs /run
fs tmpfs tmpfs /tmp
if [ -d /sys/firmware/efi/efivars ]; then fs efivarfs efivarfs /sys/firmware/efi/efivars; fi
mount -o remount,rw /
firmware=bios; [ -d /sys/firmware/efi ] && firmware=uefi
echo "PREP-START firmware=$firmware"
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add --type=subsystems
udevadm trigger --action=add --type=devices
udevadm settle --timeout=120
wait_for=$(sed -n 's/.*steward\\.wait=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
if [ -n "$wait_for" ]; then
  start=$(date +%s)
  for _ in $(seq 240); do [ -b "$wait_for" ] && break; sleep 0.5; done
  udevadm settle --timeout=60
  if [ -b "$wait_for" ]; then state=present; else state=MISSING; fi
  echo "PREP-WAIT $wait_for $state after $(( $(date +%s) - start )) s"
fi
mkdir -p /boot/efi
mount /boot/efi || echo "PREP-WARN /boot/efi not mounted"
if grep -qs '[[:space:]]/srv[[:space:]]' /etc/fstab; then  # /srv on LVM (SRV_ON_LVM)
  vgchange -ay >/dev/null && mount /srv || echo "PREP-WARN /srv not mounted"
fi
grub_rc=0
if [ -e {GRUB_FLAG} ]; then
  echo PREP-GRUB=skipped
else
  grub-install --target=i386-pc /dev/vda &&
    grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable --no-nvram &&
    update-grub
  grub_rc=$?
  echo "PREP-GRUB-RC=$grub_rc"
  if [ $grub_rc = 0 ]; then mkdir -p {Path(GRUB_FLAG).parent}; touch {GRUB_FLAG}; fi
fi
if [ $grub_rc = 0 ]; then
  dmesg -n 1  # keep kernel messages from splitting the script's output lines
  (cd /root && bash {PREP_SCRIPT} </dev/null)
  echo "PREP-RC=$?"
  dmesg -n 7
fi
mountpoint -q /boot/efi && umount /boot/efi
mountpoint -q /srv && umount /srv
command -v vgchange >/dev/null && vgchange -an >/dev/null
udevadm control --exit
sync
mount -o remount,ro / || echo "PREP-WARN / stays read-write"
sync
echo PREP-POWEROFF
# poweroff -f is reboot(2) at once; nothing may be read from the disk after that (the
# sysrq fallback shuts the devices down while this script still runs), so wait with
# bash builtins only.  Should PID 1 exit anyway, panic=-1 and qemu -no-reboot end it.
poweroff -f || echo o > /proc/sysrq-trigger
while :; do read -r -t 10 _ <>/dev/console; done
"""


def parse_marker(console: str) -> dict[str, str] | None:
    """The fields of the MARKER line a booted image printed (caps last: it has spaces)."""
    m = re.search(r"^MARKER content=(\S*) selinux=(\S*) srv=(\S*) caps=(.*)$", console, re.M)
    if m is None:
        return None
    return dict(zip(("content", "selinux", "srv", "caps"), m.groups()))


@dataclasses.dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    code: str  # sgdisk type code, e.g. "EF00"
    name: str


@dataclasses.dataclass(frozen=True)
class ServerDisk:
    image: Path
    root_uuid: str  # ext4 UUID of partition 3
    esp_uuid: str  # vfat volume id of partition 2, as in fstab ("ABCD-1234")


def _run(argv: Sequence[str], timeout: float = 120, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s", argv)
    res = subprocess.run(list(argv), timeout=timeout, check=False, text=True,
                         capture_output=True, stdin=subprocess.DEVNULL, env=env)
    if check and res.returncode:
        raise RuntimeError(f"{argv} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
    return res


def build_server_rootfs() -> Path:
    """The cached rootfs with SERVER_PACKAGES (first build ~70 s, then instant)."""
    return build_rootfs(SERVER_PACKAGES)


def partitions(image: Path) -> list[Partition]:
    """The GPT partitions of *image*, as ``sgdisk -p`` lists them."""
    out = _run(["sgdisk", "-p", str(image)], timeout=30).stdout
    match = re.search(r"Sector size \(logical\): (\d+) bytes", out)
    sector = int(match.group(1)) if match else 512
    parts = []
    for line in out.splitlines():
        m = re.match(r"\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+([0-9A-F]{4})\s*(.*)$", line)
        if m:
            first, last = int(m.group(2)), int(m.group(3))
            parts.append(Partition(int(m.group(1)), first * sector,
                                   (last - first + 1) * sector, m.group(4), m.group(5)))
    return parts


def partition(image: Path, number: int) -> Partition:
    for part in partitions(image):
        if part.number == number:
            return part
    raise LookupError(f"{image} has no partition {number}")


@contextlib.contextmanager
def loop_partition(image: Path, number: int) -> Iterator[str]:
    """A loop device (its path) over partition *number* of *image*."""
    part = partition(image, number)
    dev = _run(["losetup", "--find", "--show", "--offset", str(part.start),
                "--sizelimit", str(part.size), str(image)], timeout=30).stdout.strip()
    try:
        yield dev
    finally:
        _run(["losetup", "-d", dev], timeout=30, check=False)


@contextlib.contextmanager
def mounted_partition(image: Path, number: int = 3, readonly: bool = False,
                      ) -> Iterator[Path]:
    """Mount partition *number* (default: the root fs) of *image* on a temp dir.  Not for
    vfat: mounting vfat fails on the development machine (use mtools)."""
    with loop_partition(image, number) as dev:
        mnt = Path(tempfile.mkdtemp(prefix="steward-vmdisk-"))
        try:
            _run(["mount", *(["-o", "ro"] if readonly else []), dev, str(mnt)], timeout=60)
            try:
                yield mnt
            finally:
                _run(["sync", "-f", str(mnt)], timeout=120, check=False)
                if _run(["umount", str(mnt)], timeout=120, check=False).returncode:
                    time.sleep(1)
                    _run(["umount", str(mnt)], timeout=120)
        finally:
            with contextlib.suppress(OSError):
                mnt.rmdir()


@contextlib.contextmanager
def _proc_mounted(root: Path) -> Iterator[None]:
    target = root / "proc"
    _run(["mount", "-t", "proc", "proc", str(target)], timeout=30)
    try:
        yield
    finally:
        _run(["umount", str(target)], timeout=30, check=False)


def build_wheel(dest: Path, repo: Path = REPO) -> Path:
    """Build steward's wheel from *repo* into *dest* without touching *repo* (pip would
    write build/ and *.egg-info into it): the sources are copied to a temp dir first."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="steward-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "setup.cfg", "setup.py", "README.md"):
            if (repo / name).exists():  # setup.cfg holds the metadata (6496703)
                shutil.copy2(repo / name, src / name)
        for pkg in _PACKAGES_IN_WHEEL:
            shutil.copytree(repo / pkg, src / pkg,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
              "--disable-pip-version-check", "-w", str(dest), str(src)], timeout=300)
    wheels = sorted(dest.glob("steward-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise RuntimeError(f"pip built no steward wheel in {dest}")
    return wheels[-1]


def install_steward(root: Path, wheel: Path) -> None:
    """Unpack *wheel* into the image's /usr/local python path and add /usr/local/bin/steward."""
    site = root / PYTHON_SITE
    site.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    bin_dir = root / "usr/local/bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "steward").write_text(
        "#!/usr/bin/python3\nfrom agent.cli import main\nraise SystemExit(main())\n")
    (bin_dir / "steward").chmod(0o755)


def chroot_run(root: Path, argv: Sequence[str], timeout: float = 60,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run *argv* in a chroot of *root* with /proc mounted (psutil needs it)."""
    with _proc_mounted(root):
        return _run(["chroot", str(root), *argv], timeout=timeout, check=check, env=_ENV)


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    dest.chmod(mode)
    return dest


def _customize(root: Path, disk: ServerDisk, wheel: Path | None) -> None:
    _write(root, "/etc/fstab",
           f"UUID={disk.root_uuid} / ext4 errors=remount-ro 0 1\n"
           f"UUID={disk.esp_uuid} /boot/efi vfat umask=0077 0 2\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    _write(root, "/etc/default/grub", GRUB_DEFAULTS)
    conf = root / "etc/initramfs-tools/initramfs.conf"
    text = conf.read_text()
    if not re.search(r"^MODULES=most$", text, re.MULTILINE):
        # the initrd was built with another setting: make it generic and rebuild it
        conf.write_text(re.sub(r"^MODULES=.*$", "MODULES=most", text, flags=re.MULTILINE))
        chroot_run(root, ["update-initramfs", "-u", "-k", "all"], timeout=600)
    _write(root, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    shadow = root / "etc/shadow"  # root logs in on the serial console without a password
    shadow.write_text(re.sub(r"^root:[^:]*:", "root::", shadow.read_text(), flags=re.M))
    _write(root, PREP_INIT, PREP_INIT_SCRIPT, 0o755)
    _write(root, "/usr/local/sbin/steward-marker", MARKER_SCRIPT, 0o755)
    _write(root, "/etc/systemd/system/steward-marker.service", MARKER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "steward-marker.service").symlink_to("/etc/systemd/system/steward-marker.service")
    _write(root, MARKER_PATH, MARKER_TEXT + "\n")
    chroot_run(root, ["setfattr", "-n", "security.selinux", "-v", MARKER_SELINUX,
                      MARKER_PATH])
    chroot_run(root, ["setcap", MARKER_CAPS, MARKER_PATH])
    if wheel is not None:
        install_steward(root, wheel)
        res = chroot_run(root, ["/usr/local/bin/steward", "--help"], check=False)
        if res.returncode:
            raise RuntimeError(f"steward --help fails with the image's python3:\n"
                               f"{res.stdout}{res.stderr}")


def make_server_disk(rootfs: Path, image: Path, size: int = 2 * GiB, *,
                     repo: Path | None = REPO, wheel: Path | None = None) -> ServerDisk:
    """Create the raw, sparse server disk *image* (see the module docstring) from *rootfs*.

    steward is installed from *wheel*, else from a wheel built from *repo*; with neither,
    it is not installed.  GRUB is installed by the first ``prep_boot()``."""
    esp_volid = uuid.uuid4().hex[:8].upper()  # mkfs.vfat -i takes it without the dash
    disk = ServerDisk(image=image, root_uuid=str(uuid.uuid4()),
                      esp_uuid=f"{esp_volid[:4]}-{esp_volid[4:]}")
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size)
    _run(["sgdisk", "-n", "1:2048:+1M", "-t", "1:EF02", "-c", "1:bios",
          "-n", "2:0:+64M", "-t", "2:EF00", "-c", "2:ESP",
          "-n", f"3:0:-{LVM_SIZE // MiB}M", "-t", "3:8300", "-c", "3:root",
          "-n", "4:0:0", "-t", "4:8E00", "-c", "4:lvm", str(image)], timeout=30)
    with loop_partition(image, 2) as dev:
        # -I: a loop device may carry stale partition entries from earlier users (losetup -P)
        _run(["mkfs.vfat", "-I", "-n", "ESP", "-i", esp_volid, dev], timeout=60)
    with loop_partition(image, 3) as dev:
        _run(["mkfs.ext4", "-F", "-q", "-L", "root", "-U", disk.root_uuid, dev], timeout=120)
    with contextlib.ExitStack() as stack:
        if wheel is None and repo is not None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="steward-whl-"))
            wheel = build_wheel(Path(tmp), repo)
        root = stack.enter_context(mounted_partition(image, 3))
        _run(["cp", "-a", f"{rootfs}/.", str(root)], timeout=600)
        _customize(root, disk, wheel)
    return disk


def boot_files(image: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the newest kernel and its initrd out of *image*'s /boot into *dest*."""
    with mounted_partition(image, 3, readonly=True) as root:
        return _copy_boot_files(root, dest)


def _copy_boot_files(root: Path, dest: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise LookupError(f"no kernel in {root}/boot")
    version = kernels[-1].name[len("vmlinuz-"):]
    kernel = Path(shutil.copy2(kernels[-1], dest / kernels[-1].name))
    initrd = Path(shutil.copy2(root / f"boot/initrd.img-{version}",
                               dest / f"initrd.img-{version}"))
    return kernel, initrd


def prep_boot(image: Path, usb_image: Path | None, script: str,
              firmware: Firmware = "bios", timeout: float = 600, *,
              nvram: Path | None = None, log_file: Path | None = None,
              memory: int = 1024) -> str:
    """Boot *image* into the maintenance init (see the module docstring) with *usb_image*
    as a USB stick, run *script* (bash) as root and power off.  Return the cleaned console
    text; it contains ``PREP-RC=<exit status of script>``.  AssertionError (with the
    console tail) when GRUB's installation fails or the script does not finish in
    *timeout* seconds."""
    with tempfile.TemporaryDirectory(prefix="steward-prep-") as tmp:
        with mounted_partition(image, 3) as root:
            _write(root, PREP_SCRIPT, script, 0o755)
            _write(root, PREP_INIT, PREP_INIT_SCRIPT, 0o755)  # the current version
            kernel, initrd = _copy_boot_files(root, Path(tmp))
        append = f"root=LABEL=root rw console=ttyS0,115200 init={PREP_INIT} panic=-1"
        disks: list[tuple[Path | str, DiskBus]] = [(image, "virtio")]
        if usb_image is not None:
            disks.append((usb_image, "usb"))
            append += " steward.wait=/dev/sda"
        deadline = time.monotonic() + timeout
        with VM(disks, firmware=firmware, nvram=nvram, kernel=kernel, initrd=initrd,
                append=append, memory=memory, no_reboot=True, log=log_file,
                serials=[SERVER_SERIAL]) as vm:
            m = vm.expect(r"^PREP-GRUB-RC=(\d+)$|^PREP-GRUB=skipped$", timeout)
            if m.group(1) not in (None, "0"):
                raise AssertionError(f"GRUB installation failed\n{vm.output[-3000:]}")
            vm.expect(r"^PREP-RC=\d+$", max(1.0, deadline - time.monotonic()))
            vm.wait(max(30.0, deadline - time.monotonic()))
            return vm.output
