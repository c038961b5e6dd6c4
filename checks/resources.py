"""Machine resources: disk space and inodes per filesystem, memory, swap, load, zombies."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import psutil

from agent.config.schema import GLOBS, RANGE, TEXT, CheckOptions, Parser, listing, option
from agent.env import Env
from agent.model import Check, Metric, Result, Status
from agent.quote import human_bytes
from agent.ranges import Range, judge

# Read-only media and images are always 100 % full; network filesystems are not ours.
SKIP_FSTYPES = frozenset({"squashfs", "iso9660", "udf", "nfs", "nfs4", "cifs", "smb3",
                          "fuse.sshfs", "ceph", "glusterfs", "9p"})


def percent_metric(name: str, value: float, warn: Range, crit: Range) -> Metric:
    return Metric(name, round(value, 2), "%", warn.text, crit.text, 0, 100)


@dataclass(frozen=True)
class DiskOptions(CheckOptions):
    warn: Range = option(Range.parse("85"), RANGE, "used space, percent")
    crit: Range = option(Range.parse("95"), RANGE, "used space, percent")
    inodes_warn: Range = option(Range.parse("85"), RANGE, "used inodes, percent")
    inodes_crit: Range = option(Range.parse("95"), RANGE, "used inodes, percent")
    mounts: tuple[str, ...] | None = option(
        None, listing(TEXT), "every local disk filesystem is watched")
    exclude: tuple[str, ...] = option((), GLOBS, "mount points (globs) not to watch")


def local_mounts() -> list[str]:
    """Mount points of local, disk-backed filesystems, one per device: a device mounted more
    than once (bind mounts) is watched at its shortest path; single files bound onto files
    (as containers get /etc/resolv.conf) are not filesystems to watch."""
    best: dict[str, str] = {}
    for p in psutil.disk_partitions(all=False):
        if p.fstype in SKIP_FSTYPES or not os.path.isdir(p.mountpoint):
            continue
        if p.device not in best or len(p.mountpoint) < len(best[p.device]):
            best[p.device] = p.mountpoint
    return sorted(best.values())


class DiskCheck(Check):
    name = "disk"
    Options = DiskOptions
    options: DiskOptions

    @classmethod
    def resolve(cls, options: DiskOptions, env: Env) -> DiskOptions:
        if options.mounts is not None:
            return options
        return dataclasses.replace(options, mounts=tuple(local_mounts()))

    @classmethod
    def instances(cls, options: DiskOptions, env: Env) -> Iterable[Check]:
        mounts = options.mounts if options.mounts is not None else local_mounts()
        return [cls(options, m) for m in mounts
                if not any(fnmatchcase(m, pat) for pat in options.exclude)]

    def run(self, env: Env) -> Iterable[Result]:
        o, mp = self.options, self.target
        try:
            st = os.statvfs(mp)
        except OSError as e:
            return [self.result(Status.UNKNOWN, f"cannot read {mp}: {e.strerror}")]
        size = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        used_blocks = st.f_blocks - st.f_bfree
        # As df: space reserved for root counts neither as used nor as available.
        denom = used_blocks + st.f_bavail
        used = 100.0 * used_blocks / denom if denom else 0.0
        status = judge(used, o.warn, o.crit)
        metrics = [percent_metric("used", used, o.warn, o.crit), Metric("free", free, "B", min=0)]
        summary = f"{used:.0f}% used, {human_bytes(free)} free of {human_bytes(size)}"
        remedy = [f"see what grew: du -xh --max-depth=2 {mp} | sort -h | tail -20"] * bool(status)
        if st.f_files:  # vfat and btrfs have no fixed inode table
            iused = 100.0 * (st.f_files - st.f_ffree) / st.f_files
            istatus = judge(iused, o.inodes_warn, o.inodes_crit)
            metrics.append(percent_metric("inodes_used", iused, o.inodes_warn, o.inodes_crit))
            summary += f"; inodes {iused:.0f}% used"
            if istatus:
                remedy.append(f"find the folders full of small files: find {mp} -xdev -type f "
                              "| cut -d/ -f1-4 | sort | uniq -c | sort -n | tail")
            status = max(status, istatus)
        return [self.result(Status(status), summary, metrics=tuple(metrics),
                            remedy="; ".join(remedy))]


@dataclass(frozen=True)
class MemoryOptions(CheckOptions):
    warn: Range = option(Range.parse("90"), RANGE, "used memory (not counting cache), percent")
    crit: Range = option(Range.parse("95"), RANGE, "used memory (not counting cache), percent")


class MemoryCheck(Check):
    name = "memory"
    Options = MemoryOptions
    options: MemoryOptions

    def run(self, env: Env) -> Iterable[Result]:
        vm = psutil.virtual_memory()
        used = 100.0 * (vm.total - vm.available) / vm.total
        status = Status(judge(used, self.options.warn, self.options.crit))
        return [self.result(
            status, f"{used:.0f}% used, {human_bytes(vm.available)} available of "
            f"{human_bytes(vm.total)}",
            metrics=(percent_metric("used", used, self.options.warn, self.options.crit),
                     Metric("available", vm.available, "B", min=0, max=vm.total)),
            remedy="" if not status else "largest processes: ps -eo pid,rss,comm --sort=-rss "
            "| head")]


@dataclass(frozen=True)
class SwapOptions(CheckOptions):
    warn: Range = option(Range.parse("60"), RANGE, "used swap, percent")
    crit: Range = option(Range.parse("85"), RANGE, "used swap, percent")


class SwapCheck(Check):
    name = "swap"
    Options = SwapOptions
    options: SwapOptions

    def run(self, env: Env) -> Iterable[Result]:
        sw = psutil.swap_memory()
        if not sw.total:
            return [self.result(Status.OK, "no swap configured")]
        used = 100.0 * sw.used / sw.total
        status = Status(judge(used, self.options.warn, self.options.crit))
        return [self.result(
            status, f"{used:.0f}% used, {human_bytes(sw.used)} of {human_bytes(sw.total)}",
            metrics=(percent_metric("used", used, self.options.warn, self.options.crit),),
            remedy="" if not status else "find what is swapped out: grep VmSwap /proc/*/status "
            "| sort -k2 -n | tail")]


def _average(v: Any) -> int:
    if isinstance(v, bool) or v not in (1, 5, 15):
        raise ValueError("not 1, 5 or 15")
    return int(v)


@dataclass(frozen=True)
class LoadOptions(CheckOptions):
    warn: Range = option(Range.parse("2"), RANGE, "load average per CPU")
    crit: Range = option(Range.parse("4"), RANGE, "load average per CPU")
    average: int = option(5, Parser(_average, "1, 5 or 15"), "which load average (minutes) is "
                          "judged")


class LoadCheck(Check):
    name = "load"
    Options = LoadOptions
    options: LoadOptions

    def run(self, env: Env) -> Iterable[Result]:
        cpus = os.cpu_count() or 1
        loads = dict(zip((1, 5, 15), (x / cpus for x in os.getloadavg())))
        o = self.options
        status = Status(judge(loads[o.average], o.warn, o.crit))
        metrics = tuple(Metric(f"load{m}_per_cpu", round(v, 3), "",
                               o.warn.text if m == o.average else "",
                               o.crit.text if m == o.average else "", 0)
                        for m, v in loads.items())
        return [self.result(
            status, "per CPU: " + " ".join(f"{v:.2f}" for v in loads.values())
            + f" (1/5/15 min, {cpus} CPUs)", metrics=metrics,
            remedy="" if not status else "busiest processes: top -b -n1 -o %CPU | head -20")]


@dataclass(frozen=True)
class ZombieOptions(CheckOptions):
    warn: Range = option(Range.parse("5"), RANGE, "zombie processes")
    crit: Range = option(Range.parse("20"), RANGE, "zombie processes")


class ZombieCheck(Check):
    name = "zombies"
    Options = ZombieOptions
    options: ZombieOptions

    def run(self, env: Env) -> Iterable[Result]:
        parents: dict[int, int] = {}
        for p in psutil.process_iter(["status", "ppid"]):
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                parents[p.info["ppid"]] = parents.get(p.info["ppid"], 0) + 1
        n = sum(parents.values())
        status = Status(judge(n, self.options.warn, self.options.crit))
        top = sorted(parents.items(), key=lambda kv: -kv[1])[:3]
        details = "; ".join(f"{c} under parent {ppid} ({_comm(ppid)})" for ppid, c in top)
        return [self.result(
            status, f"{n} zombie process{'es' if n != 1 else ''}", details=details,
            metrics=(Metric("count", n, "", self.options.warn.text, self.options.crit.text, 0),),
            remedy="" if not status else "the parent does not reap its children: restart it")]


def _comm(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "gone"
