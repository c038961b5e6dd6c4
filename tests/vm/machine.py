"""A whole x86_64 machine under qemu (TCG, no KVM here), driven through its serial console.

``VM`` starts ``qemu-system-x86_64 -nographic`` with the first serial port on qemu's
stdin/stdout (``-serial stdio -monitor none``: no monitor multiplexed in, so no escape
character to worry about).  A background thread reads the console into a buffer (and
appends it, raw, to an optional log file); ``expect()`` waits for a regex on a *cleaned*
copy: ANSI/VT100 escape sequences (firmware and GRUB menus draw with them) and other
control characters are removed, ``\\r\\n`` and lone ``\\r`` become ``\\n``.  Each match
moves a cursor, so successive ``expect()`` calls read the console in order, like pexpect.

Disks are ``(path, "virtio" | "usb")`` pairs of raw images; inside the guest the virtio
disks are /dev/vda, /dev/vdb, ... and the USB ones /dev/sda, ... (all USB disks hang off
one qemu-xhci controller).  Every disk gets a ``bootindex`` in list order, with the USB
disks first when ``boot_usb_first``; SeaBIOS and OVMF both follow it.

``firmware="uefi"`` maps OVMF_CODE_4M.fd read-only and ``nvram`` (a copy of
OVMF_VARS_4M.fd, see ``fresh_nvram()``) writable, so UEFI variables persist between two
VM runs that share it; without ``nvram`` a throwaway copy is used.

``-smp 2`` (the default) with TCG's default multi-threaded mode (MTTCG, same as
``accel="tcg,thread=multi"``) boots the server disk to its marker in ~29 s here; ``-smp 1``
takes ~35 s and ``tcg,thread=single`` ~37 s.

qemu runs under ``setpriv --pdeathsig KILL`` in its own session: it dies with the thread
that started it, and leaving the ``with`` block always kills it.
"""
from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal, Union

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TAIL_CHARS = 3000  # console tail quoted in failure messages

Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "usb"]
Pattern = Union[str, "re.Pattern[str]"]

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"             # CSI: ESC [ params intermediates final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC ... BEL | ST
    r"|\x1b[ -/]+[0-~]"                    # nF: ESC ( B and the like
    r"|\x1b[0-Z\\^-~]"                     # two-byte escapes (ESC 7, ESC c, ESC =, ...)
)
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # after \r handling: all but \t and \n
_HOLD_MAX = 64  # an unfinished escape sequence at the end of a chunk waits at most this long


def clean_console(text: str) -> str:
    """*text* without escape sequences and control characters, with \\n line ends."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CTRL.sub("", text)


def skip_reason() -> str | None:
    """None if VM tests can run here, else why not (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "VM tests need root (loop devices, mounts)"
    tools = (QEMU, "mmdebstrap", "sgdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "losetup",
             "mount", "setpriv", "setcap")
    missing = [t for t in tools if shutil.which(t) is None]
    missing += [str(p) for p in (OVMF_CODE, OVMF_VARS) if not p.is_file()]
    return f"missing: {', '.join(missing)}" if missing else None


def fresh_nvram(dest: Path) -> Path:
    """Copy the pristine OVMF variable store to *dest* (one per test) and return it."""
    shutil.copyfile(OVMF_VARS, dest)
    return dest


class VM:
    """One qemu run (context manager).  See the module docstring."""

    def __init__(self, disks: Sequence[tuple[Path | str, DiskBus]] = (), *,
                 firmware: Firmware = "bios", nvram: Path | None = None,
                 kernel: Path | None = None, initrd: Path | None = None,
                 append: str | None = None, memory: int = 1024, smp: int = 2,
                 boot_usb_first: bool = False, no_reboot: bool = False,
                 log: Path | None = None, accel: str = "tcg",
                 extra_args: Sequence[str] = (), serials: Sequence[str | None] = (),
                 scratch: Sequence[int] = ()) -> None:
        if firmware not in ("bios", "uefi"):
            raise ValueError(f"firmware must be 'bios' or 'uefi', not {firmware!r}")
        for _, bus in disks:
            if bus not in ("virtio", "usb"):
                raise ValueError(f"disk bus must be 'virtio' or 'usb', not {bus!r}")
        self.disks = [(Path(p), bus) for p, bus in disks]
        self.firmware, self.nvram = firmware, nvram
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.memory, self.smp = memory, smp
        self.boot_usb_first, self.no_reboot = boot_usb_first, no_reboot
        self.log, self.accel, self.extra_args = log, accel, list(extra_args)
        self.serials = list(serials)  # per disk: the serial number the guest sees
        self.scratch = set(scratch)  # disks (indexes) whose writes are thrown away at the end
        self.started = 0.0  # time.monotonic() at start()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self._raw = bytearray()
        self._text = ""  # cleaned console output
        self._hold = ""  # raw tail that may be an unfinished escape sequence
        self._pos = 0  # expect() cursor in _text
        self._eof = False
        self._tmp: Path | None = None

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> VM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self) -> list[str]:
        """The qemu command line (without the setpriv wrapper)."""
        argv = [QEMU, "-accel", self.accel, "-smp", str(self.smp), "-m", str(self.memory),
                "-nographic", "-serial", "stdio", "-monitor", "none", "-nic", "none"]
        if self.no_reboot:
            argv.append("-no-reboot")
        if self.firmware == "uefi":
            nvram = self.nvram
            if nvram is None:
                assert self._tmp is not None
                nvram = fresh_nvram(self._tmp / "OVMF_VARS.fd")
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={nvram}"]
        if self.kernel is not None:
            argv += ["-kernel", str(self.kernel)]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
            if self.append is not None:
                argv += ["-append", self.append]
        order = sorted(range(len(self.disks)),
                       key=lambda i: (self.disks[i][1] != "usb") if self.boot_usb_first else 0)
        bootindex = {i: n for n, i in enumerate(order, start=1)}  # -kernel takes 0
        if any(bus == "usb" for _, bus in self.disks):
            argv += ["-device", "qemu-xhci,id=xhci"]
        for i, (path, bus) in enumerate(self.disks):
            drive = f"{'u' if bus == 'usb' else 'd'}{i}"
            snap = ",snapshot=on" if i in self.scratch else ""
            argv += ["-drive", f"if=none,id={drive},format=raw,file={path}{snap}"]
            dev = "usb-storage,bus=xhci.0" if bus == "usb" else "virtio-blk-pci"
            serial = self.serials[i] if i < len(self.serials) else None
            dev += f",serial={serial}" if serial else ""
            argv += ["-device", f"{dev},drive={drive},bootindex={bootindex[i]}"]
        return argv + self.extra_args

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("VM already started")
        for path, _ in self.disks:
            if not path.exists():
                raise FileNotFoundError(path)
        self._tmp = Path(tempfile.mkdtemp(prefix="steward-vm-"))
        try:
            argv = self.argv()
            if self.log is not None:
                with open(self.log, "ab") as fh:
                    fh.write(f"\n===== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            self.started = time.monotonic()
            self._proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", *argv], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            self._reader = threading.Thread(target=self._read, name="qemu-console",
                                            daemon=True)
            self._reader.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill qemu (if still running), reap it, drop temporary files.  Idempotent."""
        self.kill()
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL qemu now (no guest shutdown)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def wait(self, timeout: float) -> int:
        """Wait for qemu to exit (the guest powered off) and return its exit status;
        AssertionError with the console tail if it is still running after *timeout*."""
        proc = self._require()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"qemu still running after {timeout:.0f} s\n"
                                 f"{self._tail()}") from None
        if self._reader is not None:
            self._reader.join(timeout=10)
        return rc

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    # -- console ------------------------------------------------------------------------

    @property
    def output(self) -> str:
        """Everything the console printed so far, cleaned (see ``clean_console``)."""
        with self._cond:
            return self._text

    @property
    def raw_output(self) -> bytes:
        """Everything the console printed so far, as received."""
        with self._cond:
            return bytes(self._raw)

    def expect(self, pattern: Pattern, timeout: float = 60.0) -> re.Match[str]:
        """Wait until *pattern* (a ``str`` is compiled with re.MULTILINE) matches the
        cleaned console output after the previous match; return the match.  Raise
        AssertionError with the console tail on timeout or when qemu exits first."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._text, self._pos)
                if match is not None:
                    self._pos = match.end()
                    return match
                if self._eof:
                    why = f"qemu exited ({self._exit_status()})"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"timed out after {timeout:.0f} s"
                    break
                self._cond.wait(min(left, 1.0))
        raise AssertionError(f"console never matched {regex.pattern!r}: {why}\n{self._tail()}")

    def send(self, text: str) -> None:
        """Type *text* on the serial console (no newline added)."""
        proc = self._require()
        assert proc.stdin is not None
        try:
            proc.stdin.write(text.encode())
            proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"qemu exited ({self._exit_status()})\n{self._tail()}"
                                 ) from None

    def sendline(self, text: str = "") -> None:
        self.send(text + "\n")

    # -- internals ----------------------------------------------------------------------

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("VM not started")
        return self._proc

    def _exit_status(self) -> int | None:
        """qemu's exit status once its console reached EOF (it is exiting)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._require().wait(timeout=5)
        return None

    def _tail(self) -> str:
        with self._cond:
            tail = self._text[-TAIL_CHARS:]
        return f"--- last {len(tail)} chars of console ---\n{tail}\n--- end of console ---"

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        log: IO[bytes] | None = None
        try:
            if self.log is not None:
                log = open(self.log, "ab")  # noqa: SIM115 (closed in finally)
            fd = proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if log is not None:
                    log.write(chunk)
                    log.flush()
                self._feed(chunk, decoder.decode(chunk, final=not chunk))
                if not chunk:
                    break
        finally:
            if log is not None:
                log.close()
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _feed(self, raw: bytes, text: str) -> None:
        buf = self._hold + text
        cut = len(buf)
        if raw:  # at EOF flush everything
            esc = buf.rfind("\x1b", max(0, cut - _HOLD_MAX))
            if esc >= 0 and _ANSI.match(buf, esc) is None:
                cut = esc  # maybe the start of a sequence whose rest is still coming
            if buf[:cut].endswith("\r"):
                cut -= 1  # maybe the first half of \r\n
        clean = clean_console(buf[:cut])
        with self._cond:
            self._raw += raw
            self._hold = buf[cut:]
            self._text += clean
            self._cond.notify_all()
