"""What uses a disk: mounts, swaps and devices built on it, and which disks hold the running
system. Pure functions over /proc texts and a sysfs tree, so tests can hand in their own."""

from __future__ import annotations

import errno
import os
import re
import stat

# Mount points whose disk is "the running system"; anything below /usr and /var as well.
SYSTEM_MOUNTS = frozenset({"/", "/boot", "/boot/efi", "/efi", "/usr", "/var", "/home",
                           "/opt", "/srv"})
_OCTAL = re.compile(r"\\([0-7]{3})")


def read_attr(path: str) -> str:
    """A sysfs attribute's text, stripped; "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _unescape(s: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), s)


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(major:minor, source, target) of each line of /proc/self/mountinfo."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if sep and len(f) >= 5 and len(r) >= 2:
            out.append((f[2], _unescape(r[1]), _unescape(f[4])))
    return out


def parse_swaps(text: str) -> list[str]:
    """The paths of the active swaps in /proc/swaps."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


def _node_names(sysfs_root: str) -> dict[str, str]:
    """major:minor -> kernel name of every block device (disks and partitions)."""
    out = {}
    base = os.path.join(sysfs_root, "class", "block")
    for name in os.listdir(base) if os.path.isdir(base) else ():
        devno = read_attr(f"{base}/{name}/dev")
        if devno:
            out[devno] = name
    return out


def _node_of(devno: str, path: str, nodes: dict[str, str], file_ok: bool = False) -> str | None:
    """The block device behind a mount (its major:minor; failing that, its source path, e.g.
    for btrfs) or behind a swap (a partition, or the filesystem holding a swap file)."""
    if devno in nodes:
        return nodes[devno]
    if not path.startswith("/"):
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # gone, or another root: go by name (/dev/sdb2, /dev/dm-0)
        name = os.path.basename(path) if path.startswith("/dev/") else ""
        return name if name in nodes.values() else None
    if stat.S_ISBLK(st.st_mode):
        return nodes.get(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return nodes.get(f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}") if file_ok else None


def _list(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def disks_of(node: str, sysfs_root: str = "/sys", _seen: frozenset[str] = frozenset()
             ) -> set[str]:
    """The whole disks under block device ``node``: a partition's disk, the disks under a
    dm/md device (through its slaves, recursively), or ``node`` itself."""
    base = os.path.join(sysfs_root, "class", "block", node)
    if node in _seen:
        return set()
    if os.path.exists(f"{base}/partition"):
        return {os.path.basename(os.path.dirname(os.path.realpath(base)))}
    slaves = _list(f"{base}/slaves")
    if not slaves:
        return {node}
    return set().union(*(disks_of(s, sysfs_root, _seen | {node}) for s in slaves))


def _partitions(sys_path: str) -> list[str]:
    return [e for e in _list(sys_path) if os.path.exists(f"{sys_path}/{e}/partition")]


def stack(disk: str, sysfs_root: str = "/sys") -> list[str]:
    """``disk``, its partitions and every device built on them (holders, recursively)."""
    todo = [disk, *_partitions(os.path.realpath(os.path.join(sysfs_root, "block", disk)))]
    out: list[str] = []
    while todo:
        node = todo.pop(0)
        if node not in out:
            out.append(node)
            todo += _list(os.path.join(sysfs_root, "class", "block", node, "holders"))
    return out


def _is_system(target: str) -> bool:
    return target in SYSTEM_MOUNTS or target.startswith(("/usr/", "/var/"))


def system_disks(mountinfo_text: str, swaps_text: str, sysfs_root: str = "/sys") -> set[str]:
    """The disks the running system lives on: under /, /boot, /boot/efi, /usr, /var, /home,
    /opt, /srv (and mounts below /usr and /var) or an active swap, through partitions, LVM,
    md and dm-crypt."""
    nodes = _node_names(sysfs_root)
    found: set[str] = set()
    for devno, source, target in parse_mountinfo(mountinfo_text):
        node = _node_of(devno, source, nodes) if _is_system(target) else None
        if node:
            found |= disks_of(node, sysfs_root)
    for path in parse_swaps(swaps_text):
        node = _node_of("", path, nodes, file_ok=True)
        if node:
            found |= disks_of(node, sysfs_root)
    return found


def usage(disk: str, mountinfo_text: str, swaps_text: str, sysfs_root: str = "/sys",
          check_open: bool = True) -> list[str]:
    """Why ``disk`` is busy, one line per reason; [] when nothing uses it. Besides mounts and
    swaps named in the given texts, asks the kernel: an exclusive open fails while anything
    (also in another mount namespace) has a partition mounted or a device built on it."""
    nodes = _node_names(sysfs_root)
    members = stack(disk, sysfs_root)
    mounted: dict[str, list[str]] = {}
    for devno, source, target in parse_mountinfo(mountinfo_text):
        node = _node_of(devno, source, nodes)
        if node in members and target not in mounted.setdefault(node, []):
            mounted[node].append(target)
    reasons = []
    for node, targets in mounted.items():
        more = f" and {len(targets) - 3} more places" if len(targets) > 3 else ""
        reasons.append(f"/dev/{node} is mounted on {', '.join(targets[:3])}{more}")
    for path in parse_swaps(swaps_text):
        node = _node_of("", path, nodes, file_ok=True)
        if node in members:
            reasons.append(f"/dev/{node} is in use as swap ({path})")
    own = {disk, *_partitions(os.path.realpath(os.path.join(sysfs_root, "block", disk)))}
    for node in members:
        if node not in own:
            what = read_attr(f"{sysfs_root}/class/block/{node}/dm/name") or "a stacked device"
            reasons.append(f"/dev/{node} ({what}) is built on it")
    if check_open and not reasons:
        try:
            os.close(os.open(f"/dev/{disk}", os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK))
        except OSError as e:
            if e.errno == errno.EBUSY:
                reasons.append(f"the kernel reports /dev/{disk} busy (mounted in another mount "
                               "namespace, or opened exclusively by a program)")
    return reasons


def live_texts() -> tuple[str, str]:
    """This system's /proc/self/mountinfo and /proc/swaps."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        mountinfo = f.read()
    try:
        with open("/proc/swaps", encoding="utf-8", errors="surrogateescape") as f:
            swaps = f.read()
    except OSError:
        swaps = ""
    return mountinfo, swaps
