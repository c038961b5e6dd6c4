"""Which process, and which systemd unit, holds a listening TCP port: read from /proc
(``/proc/net/tcp{,6}`` gives the socket's inode, ``/proc/PID/fd`` who holds it,
``/proc/PID/cgroup`` its unit). Only asked when a probe fails, so the walk over /proc costs
nothing while all is well."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
MAX_TABLE = 8 << 20  # bytes read of one /proc/net table (a busy host has a few thousand lines)


@dataclass(frozen=True)
class Owner:
    pid: int
    comm: str  # the process name, e.g. "master"
    unit: str  # the systemd unit of its cgroup, e.g. "postfix@-.service"; "" if none

    def describe(self, port: int) -> str:
        where = f"in {self.unit}" if self.unit else "outside any systemd service"
        return f"port {port} is held by PID {self.pid} ({self.comm}) {where}"


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 and IPv6)."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(proc / "net" / table, encoding="ascii", errors="replace") as f:
                text = f.read(MAX_TABLE)
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            _, _, hexport = fields[1].rpartition(":")
            try:
                if int(hexport, 16) == port and fields[9] != "0":
                    found.add(fields[9])
            except ValueError:
                continue
    return found


def unit_of(pid: int, proc: Path = Path("/proc")) -> str:
    """The unit whose cgroup holds ``pid``: the last component of its systemd cgroup path
    that names a unit (``0::/system.slice/postfix@-.service`` -> ``postfix@-.service``; a
    container's view from the host, ``.../payload/system.slice/x.service``, gives the same)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text(errors="replace")[:65536]
    except OSError:
        return ""
    for line in text.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope", ".socket")):
                return part
        return ""
    return ""


def port_owner(port: int, proc: Path = Path("/proc")) -> Owner | None:
    """The process holding the listening socket of ``port`` (the lowest PID when several
    share it, as a pre-forking daemon's workers do), or None when nothing listens."""
    wanted = {f"socket:[{i}]" for i in listening_inodes(port, proc)}
    if not wanted:
        return None
    pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    for pid in pids:
        fds = proc / str(pid) / "fd"
        try:
            names = os.listdir(fds)
        except OSError:  # gone, or not ours to read
            continue
        for fd in names:
            try:
                if os.readlink(fds / fd) in wanted:
                    return Owner(pid, _comm(pid, proc), unit_of(pid, proc))
            except OSError:
                continue
    return None


def _comm(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "comm").read_text(errors="replace")[:64].strip()
    except OSError:
        return "?"
