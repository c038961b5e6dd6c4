"""Clock synchronisation, read from the kernel exactly as systemd-timedated's NTPSynchronized is.

timedated calls adjtimex(2) and calls the clock synchronised when the kernel's maximum error is
below 16 s; reading the kernel directly works without D-Bus, in a rescue system and in a
container, and costs no fork.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config.schema import CheckOptions, choice, option
from agent.env import Env
from agent.model import Check, Metric, Result, Status

UNSYNC_MAXERROR_US = 16_000_000  # systemd's threshold (src/basic/time-util.c, ntp_synced)
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (glibc, LP64 and ILP32 alike: longs and ints).
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time", _Timeval), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class KernelClock:
    state: int  # adjtimex return value: TIME_OK 0 ... TIME_ERROR 5
    maxerror_us: int
    esterror_us: int

    @property
    def synchronized(self) -> bool:
        return self.maxerror_us < UNSYNC_MAXERROR_US


def read_kernel_clock() -> KernelClock:
    """adjtimex(2) with no modes set: reads, changes nothing."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()
    rc = libc.adjtimex(ctypes.byref(tx))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return KernelClock(rc, tx.maxerror, tx.esterror)


@dataclass(frozen=True)
class TimeSyncOptions(CheckOptions):
    unsynchronized: str = option("warn", choice("warn", "crit"),
                                 "status when the clock is not synchronised")


class TimeSyncCheck(Check):
    name = "timesync"
    Options = TimeSyncOptions
    options: TimeSyncOptions

    def run(self, env: Env) -> Iterable[Result]:
        try:
            return [self.judge(read_kernel_clock())]
        except OSError as e:
            return [self.result(Status.UNKNOWN, f"cannot read the kernel clock state: "
                                f"adjtimex: {e.strerror}",
                                details="even reading is refused when a seccomp filter forbids "
                                "adjtimex(2), as systemd-nspawn's does in containers")]

    def judge(self, k: KernelClock) -> Result:
        metrics = (Metric("maxerror", k.maxerror_us / 1e6, "s", min=0),
                   Metric("esterror", k.esterror_us / 1e6, "s", min=0))
        if k.synchronized:
            return self.result(Status.OK, f"synchronised (estimated error "
                               f"{k.esterror_us / 1000:.1f} ms)", metrics=metrics)
        bad = Status.CRIT if self.options.unsynchronized == "crit" else Status.WARN
        return self.result(
            bad, "clock is not synchronised (NTPSynchronized=no)", metrics=metrics,
            details=f"kernel maximum error {k.maxerror_us / 1e6:.1f} s (synchronised below "
            f"{UNSYNC_MAXERROR_US / 1e6:.0f} s); adjtimex state {k.state}",
            remedy="systemctl enable --now chronyd; then check its sources: chronyc sources -v")
