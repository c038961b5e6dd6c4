"""What ``steward restore`` will do, decided before any disk is touched: which saved disks go
onto which present ones, their partition tables (sfdisk scripts with the saved disk and
partition GUIDs, the last partition grown onto a larger disk or shrunk onto a smaller one when
its data fits), the filesystems, swap and LVM to recreate with their saved UUIDs and labels,
and the UUIDs that must change because the saved ones are in use on this machine.

Everything here reads the generation's layout.json and manifest.json and the present disks;
nothing writes.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from agent.errors import UsageError
from backup.progress import human
from backup.store import Generation
from usbimage.detect import Disk

MIB = 2**20
GPT_TAIL = 33  # sectors at the end of the disk: the backup GPT entries (32) and header
SUPPORTED = ("ext2", "ext3", "ext4", "xfs", "vfat", "swap")
GROWABLE = ("ext2", "ext3", "ext4", "xfs", "LVM2_member")
_SNAPSHOT = re.compile(r"steward-snap")


@dataclass
class NewFs:
    """A filesystem (or swap) to make; ``prefix`` is where its files go in the restored tree
    (None: made empty — swap, or a filesystem the backup did not hold)."""

    saved: str  # the device it was on: /dev/vda3, /dev/mapper/rhel-root
    device: str  # where it will be: /dev/vdb3, /dev/rhel/root
    fstype: str
    uuid: str | None
    label: str | None
    version: str | None = None  # FAT12/16/32
    prefix: str | None = None
    mountpoint: str | None = None  # where the saved system mounted it
    new_uuid: str | None = None  # set when the saved UUID cannot be reused here
    data_bytes: int = 0

    @property
    def uuid_now(self) -> str | None:
        return self.new_uuid or self.uuid


@dataclass
class Target:
    """One saved disk and the present disk it is recreated on."""

    saved: dict[str, Any]  # the layout's disk entry
    disk: Disk
    script: str  # sfdisk input; "" when the saved disk had no partition table
    parts: dict[str, str] = field(default_factory=dict)  # saved node -> new node
    notes: list[str] = field(default_factory=list)


@dataclass
class Lvm:
    pvs: list[tuple[str, str, str]] = field(default_factory=list)  # (new device, uuid, vg)
    vgs: list[tuple[str, int]] = field(default_factory=list)  # (name, extent size bytes)
    lvs: list[tuple[str, str, int]] = field(default_factory=list)  # (vg, lv, bytes)


@dataclass
class Plan:
    generation: Generation
    manifest: dict[str, Any]
    layout: dict[str, Any]
    targets: list[Target]
    filesystems: list[NewFs]
    lvm: Lvm
    boot_mode: str  # the saved system's: bios or uefi
    renames: dict[str, str] = field(default_factory=dict)  # old UUID/PARTUUID -> new
    notes: list[str] = field(default_factory=list)

    @property
    def mounts(self) -> list[NewFs]:
        """The filesystems that get files, outermost first."""
        got = [f for f in self.filesystems if f.prefix is not None]
        return sorted(got, key=lambda f: (f.prefix.count("/") if f.prefix else -1, f.prefix))

    def new_device(self, saved: str) -> str | None:
        for t in self.targets:
            if saved == t.saved["name"]:
                return t.disk.path
            if saved in t.parts:
                return t.parts[saved]
        return None


def part_node(disk: str, number: int) -> str:
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def _number(node: str) -> int:
    m = re.search(r"(\d+)$", node)
    if not m:
        raise ValueError(f"no partition number in {node}")
    return int(m.group(1))


def _lv_of(device: str, lvs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The LV row for /dev/VG/LV, /dev/mapper/VG-LV (dashes doubled inside names)."""
    for lv in lvs:
        vg, name = str(lv.get("vg_name")), str(lv.get("lv_name"))
        mapper = f"/dev/mapper/{vg.replace('-', '--')}-{name.replace('-', '--')}"
        if device in (lv.get("lv_path"), f"/dev/{vg}/{name}", mapper):
            return lv
    return None


def _section(layout: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = layout.get(key)
    return value if isinstance(value, list) else []


def _lvm_rows(layout: dict[str, Any], cmd: str) -> list[dict[str, Any]]:
    lvm = layout.get("lvm")
    rows = lvm.get(cmd) if isinstance(lvm, dict) else None
    return rows if isinstance(rows, list) else []


def _fs_bytes(manifest: dict[str, Any]) -> dict[int, int]:
    out: dict[int, int] = {}
    for seg in manifest.get("segments", []):
        out[seg["fs"]] = out.get(seg["fs"], 0) + int(seg.get("bytes", 0))
    return out


def needed_disks(layout: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved disks that hold a backed-up filesystem, directly or under LVM."""
    disks = [d for d in _section(layout, "disks") if isinstance(d, dict)]
    lvs, pvs = _lvm_rows(layout, "lvs"), _lvm_rows(layout, "pvs")
    wanted: set[str] = set()
    for fs in manifest["filesystems"]:
        dev = fs["device"]
        lv = _lv_of(dev, lvs)
        if lv is not None:
            wanted |= {str(p["pv_name"]) for p in pvs if p.get("vg_name") == lv["vg_name"]}
        else:
            wanted.add(dev)
    out = []
    for d in disks:
        nodes = {str(p.get("node")) for p in (d.get("partition_table") or {}).get(
            "partitions", [])}
        if d["name"] in wanted or nodes & wanted:
            out.append(d)
    missing = wanted - {d["name"] for d in out} - {
        str(p.get("node")) for d in out for p in (d.get("partition_table") or {}).get(
            "partitions", [])}
    if missing:
        raise UsageError("the saved layout does not say which disk held "
                         f"{', '.join(sorted(missing))}: this generation cannot be restored "
                         "bare-metal (restore its files with steward backup restore-file)")
    return out


def map_disks(saved: list[dict[str, Any]], present: list[Disk],
              explicit: dict[str, str]) -> list[tuple[dict[str, Any], Disk]]:
    """Saved disk -> present disk: ``explicit`` (--map) first, then the same name when it is
    big enough, then the smallest free disk that is."""
    by_path = {d.path: d for d in present}
    used: set[str] = set()
    pairs: list[tuple[dict[str, Any], Disk]] = []
    for name in explicit:
        if name not in {s["name"] for s in saved}:
            raise UsageError(f"--map {name}=...: no such disk in the saved layout (saved: "
                             f"{', '.join(s['name'] for s in saved)})")
    for s in saved:
        want = explicit.get(s["name"])
        if want is not None:
            path = os.path.realpath(want)
            disk = by_path.get(path)
            if disk is None:
                raise UsageError(f"--map {s['name']}={want}: not a disk that can be written "
                                 f"here (candidates: {', '.join(by_path) or 'none'})")
        else:
            fits = [d for d in present if d.path not in used and d.size >= min_size(s)]
            same = [d for d in fits if d.path == s["name"]]
            ordered = same or sorted(fits, key=lambda d: (d.size, d.path))
            if not ordered:
                raise UsageError(f"no disk here can take saved disk {s['name']} "
                                 f"({human(int(s['size']))}, needs at least "
                                 f"{human(min_size(s))}); attach one or give --map "
                                 f"{s['name']}=DEVICE")
            disk = ordered[0]
        if disk.path in used:
            raise UsageError(f"{disk.path} is the target of two saved disks")
        used.add(disk.path)
        pairs.append((s, disk))
    return pairs


def min_size(saved: dict[str, Any]) -> int:
    """The smallest disk the saved one fits on: every partition but the last where it was,
    the last at its data size (recorded by the planner as ``min_last``) or whole."""
    table = saved.get("partition_table")
    if not table:
        return int(saved.get("min_bytes") or saved["size"])
    ss = int(table.get("sectorsize", 512))
    parts = table.get("partitions", [])
    if not parts:
        return 2 * MIB
    last = max(parts, key=lambda p: int(p["start"]) + int(p["size"]))
    end = int(last["start"]) + int(saved.get("min_last_sectors") or last["size"])
    return (end + GPT_TAIL) * ss


def new_uuid_for(fstype: str) -> str:
    if fstype == "LVM2_member":  # LVM's form: 32 of [0-9A-Za-z] grouped 6-4-4-4-4-4-6
        c = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
        return "-".join((c[:6], *(c[i:i + 4] for i in range(6, 26, 4)), c[26:]))
    u = uuidlib.uuid4()
    return (u.hex[:4] + "-" + u.hex[4:8]).upper() if fstype == "vfat" else str(u)


def _logical_sector(disk: Disk, sysfs_root: str) -> int:
    raw = ""
    try:
        with open(f"{sysfs_root}/block/{disk.name}/queue/logical_block_size") as f:
            raw = f.read().strip()
    except OSError:
        pass
    return int(raw) if raw.isdigit() else 512


def _min_last(saved: dict[str, Any], fs_need: dict[str, int], lv_need: dict[str, int]) -> None:
    """Record how small the last partition may become: what its data needs."""
    parts = (saved.get("partition_table") or {}).get("partitions", [])
    if not parts:
        return
    ss = int(saved["partition_table"].get("sectorsize", 512))
    last = max(parts, key=lambda p: int(p["start"]) + int(p["size"]))
    node, kind = str(last["node"]), (last.get("fs") or {}).get("TYPE")
    if node in fs_need:
        need = fs_need[node]
    elif kind == "LVM2_member" and node in lv_need:
        need = lv_need[node] + 4 * MIB
    elif kind == "swap":
        need = 64 * MIB
    else:
        return
    saved["min_last_sectors"] = min(int(last["size"]), -(-need // ss))


def _script(t: Target, ss_here: int, fresh: bool, renames: dict[str, str]) -> None:
    table = t.saved["partition_table"]
    ss, label = int(table.get("sectorsize", 512)), table.get("label")
    if label not in ("gpt", "dos"):
        raise UsageError(f"saved disk {t.saved['name']}: {label} partition tables are not "
                         "supported (gpt, dos)")
    if ss != ss_here:
        raise UsageError(f"saved disk {t.saved['name']} has {ss}-byte sectors, {t.disk.path} "
                         f"{ss_here}-byte ones: partitions cannot be copied between them")
    end = t.disk.size // ss - (GPT_TAIL if label == "gpt" else 0)
    parts = sorted(table.get("partitions", []), key=lambda p: int(p["start"]))
    extended = any(str(p.get("type")).lower() in ("5", "f", "85") for p in parts)
    last = str(max(parts, key=lambda p: int(p["start"]) + int(p["size"]))["node"]) \
        if parts else None
    lid = table.get("id")
    if fresh and lid and label == "gpt":
        new = str(uuidlib.uuid4()).upper()
        renames[str(lid).lower()] = new.lower()
        lid = new
    lines = [f"label: {label}", *([f"label-id: {lid}"] if lid else []), "unit: sectors"]
    for p in parts:
        start, size = int(p["start"]), int(p["size"])
        node = part_node(t.disk.path, _number(str(p["node"])))
        t.parts[str(p["node"])] = node
        fields = [f"start={start}"]
        kind = (p.get("fs") or {}).get("TYPE")
        is_last = str(p["node"]) == last
        if is_last and start + size > end:
            size = (end - start) // 2048 * 2048
            if size < int(t.saved.get("min_last_sectors") or p["size"]):
                raise UsageError(f"{t.disk.path} is too small for saved disk "
                                 f"{t.saved['name']}: {p['node']} would not hold its data")
            t.notes.append(f"{node} shrunk to {human(size * ss)} (was "
                           f"{human(int(p['size']) * ss)}; its data fits)")
            fields.append(f"size={size}")
        elif is_last and start + size < end - 2048 and kind in GROWABLE and not extended:
            t.notes.append(f"{node} grown to the end of the disk (was "
                           f"{human(int(p['size']) * ss)})")
        elif start + size > end:
            raise UsageError(f"{t.disk.path} is too small for saved disk {t.saved['name']}: "
                             f"{p['node']} ends beyond it")
        else:
            fields.append(f"size={size}")
        fields.append(f"type={p['type']}")
        if p.get("uuid"):
            u = str(p["uuid"])
            if fresh:
                new = str(uuidlib.uuid4()).upper()
                renames[u.lower()] = new.lower()
                u = new
            fields.append(f"uuid={u}")
        if p.get("name"):
            fields.append('name="{}"'.format(str(p["name"]).replace('"', "")))
        if p.get("attrs"):
            fields.append(f'attrs="{p["attrs"]}"')
        if p.get("bootable"):
            fields.append("bootable")
        lines.append(f"{node} : " + ", ".join(fields))
    t.script = "\n".join(lines) + "\n"


def make_plan(gen: Generation, layout: dict[str, Any], present: list[Disk],
              explicit: dict[str, str], *, new_uuids: bool = False,
              in_use: set[str] | None = None, sysfs_root: str = "/sys") -> Plan:
    """The whole plan, or UsageError naming what cannot be restored here and why."""
    manifest = gen.manifest()
    if not isinstance(layout.get("disks"), list):
        raise UsageError(f"generation {gen.id} has no disk layout ({layout.get('disks')}): "
                         "restore its files with steward backup restore-file instead")
    in_use = in_use or set()
    saved = needed_disks(layout, manifest)
    lvs, pvs, vgs = (_lvm_rows(layout, c) for c in ("lvs", "pvs", "vgs"))
    sizes = _fs_bytes(manifest)
    fs_need = {fs["device"]: int(sizes.get(i, 0) * 1.15) + 320 * MIB
               for i, fs in enumerate(manifest["filesystems"])}
    lv_need: dict[str, int] = {}
    for p in pvs:
        if sum(1 for q in pvs if q.get("vg_name") == p.get("vg_name")) == 1:
            lv_need[str(p["pv_name"])] = sum(int(lv.get("lv_size") or 0) for lv in lvs
                                             if lv.get("vg_name") == p.get("vg_name"))
    for s in saved:
        _min_last(s, fs_need, lv_need)
    plan = Plan(gen, manifest, layout, [], [], Lvm(), str(layout.get("boot_mode") or "bios"))
    for s, disk in map_disks(saved, present, explicit):
        t = Target(s, disk, "")
        if s.get("partition_table"):
            fresh = new_uuids or any(str(p.get("uuid", "")).lower() in in_use
                                     for p in s["partition_table"].get("partitions", []))
            _script(t, _logical_sector(disk, sysfs_root), fresh, plan.renames)
        else:
            t.parts[s["name"]] = disk.path
        plan.targets.append(t)
    _filesystems(plan, lvs, pvs, vgs)
    for i, fs in enumerate(manifest["filesystems"]):
        lv = _lv_of(fs["device"], lvs)
        key = f"/dev/{lv['vg_name']}/{lv['lv_name']}" if lv else fs["device"]
        nf = next((f for f in plan.filesystems if key in (f.saved, f.device)), None)
        if nf is None:
            raise UsageError(f"{fs['mountpoint']} ({fs['device']}, {fs['fstype']}) cannot be "
                             "recreated: no filesystem of a supported type "
                             f"({', '.join(SUPPORTED)}) was recorded there")
        nf.prefix, nf.mountpoint, nf.data_bytes = fs["prefix"], fs["mountpoint"], sizes.get(i, 0)
    for nf in plan.filesystems:
        if nf.uuid and (new_uuids or nf.uuid.lower() in in_use):
            nf.new_uuid = new_uuid_for(nf.fstype)
            plan.renames[nf.uuid.lower()] = nf.new_uuid
    for _, pv, _ in plan.lvm.pvs:  # a PV UUID seen twice makes LVM refuse both copies
        if pv and (new_uuids or pv.lower() in in_use):
            plan.renames[pv.lower()] = new_uuid_for("LVM2_member")
    if plan.renames and not new_uuids:
        plan.notes.append("some saved UUIDs are in use on this machine: new ones are made and "
                          "fstab and the boot loader configuration are changed to match")
    return plan


def _filesystems(plan: Plan, lvs: list[dict[str, Any]], pvs: list[dict[str, Any]],
                 vgs: list[dict[str, Any]]) -> None:
    vg_of = {str(p["pv_name"]): str(p["vg_name"]) for p in pvs if p.get("vg_name")}
    for t in plan.targets:
        table = t.saved.get("partition_table")
        entries = ([(str(p["node"]), p.get("fs") or {}) for p in table.get("partitions", [])]
                   if table else [(t.saved["name"], t.saved.get("fs") or {})])
        for node, probe in entries:
            kind, new = probe.get("TYPE"), t.parts[node]
            if kind == "LVM2_member" and node in vg_of:
                plan.lvm.pvs.append((new, probe.get("UUID", ""), vg_of[node]))
            elif kind in SUPPORTED:
                plan.filesystems.append(NewFs(node, new, str(kind), probe.get("UUID"),
                                              probe.get("LABEL"), probe.get("VERSION")))
            elif kind:
                t.notes.append(f"{new} is left without a filesystem (was {kind}, which "
                               "restore does not make)")
    for vg in dict.fromkeys(vg for _, _, vg in plan.lvm.pvs):
        others = [str(p["pv_name"]) for p in pvs if p.get("vg_name") == vg
                  and plan.new_device(str(p["pv_name"])) is None]
        if others:
            raise UsageError(f"volume group {vg} also lives on {', '.join(others)}, which is "
                             "not restored; map that disk too (--map)")
        row = next((v for v in vgs if v.get("vg_name") == vg), {})
        plan.lvm.vgs.append((vg, int(row.get("vg_extent_size") or 4 * MIB)))
        for lv in lvs:
            if lv.get("vg_name") != vg or lv.get("origin") or _SNAPSHOT.search(
                    str(lv.get("lv_name"))):
                continue
            if lv.get("lv_layout") not in (None, "linear", "striped"):
                raise UsageError(f"logical volume {vg}/{lv['lv_name']} is "
                                 f"{lv.get('lv_layout')}: restore makes linear volumes only")
            plan.lvm.lvs.append((vg, str(lv["lv_name"]), int(lv["lv_size"])))
            probe = lv.get("fs") or {}
            if probe.get("TYPE") in SUPPORTED:
                path = f"/dev/{vg}/{lv['lv_name']}"
                plan.filesystems.append(NewFs(path, path, str(probe["TYPE"]),
                                              probe.get("UUID"), probe.get("LABEL"),
                                              probe.get("VERSION")))
