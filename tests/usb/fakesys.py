"""A fake sysfs tree in a temporary folder, laid out like the kernel's: the device hierarchy under
devices/, and block/, class/block/ and dev/block/ as relative symlinks into it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

USB_STORAGE = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
UAS = "devices/pci0000:00/0000:00:14.0/usb4/4-2/4-2:1.0/host7/target7:0:0/7:0:0:0"
VIRTIO = "devices/pci0000:00/0000:00:02.0/virtio1"
NVME = "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0"
SATA = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
VIRTUAL = "devices/virtual"


class FakeSys:
    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("block", "class/block", "dev/block"):
            (root / d).mkdir(parents=True, exist_ok=True)

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def link(self, rel: str, target_rel: str) -> None:
        """A relative symlink at ``rel`` to ``target_rel`` (both under the root)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(os.path.relpath(self.root / target_rel, path.parent))

    def _node(self, rel: str, name: str, devno: str, size: int) -> None:
        self.write(f"{rel}/size", str(size // 512))
        self.write(f"{rel}/dev", devno)
        for d in ("holders", "slaves"):
            (self.root / rel / d).mkdir(parents=True, exist_ok=True)
        self.link(f"class/block/{name}", rel)
        self.link(f"dev/block/{devno}", rel)

    def disk(self, parent: str, name: str, devno: str, size: int, *, removable: bool = False,
             read_only: bool = False, partitions: Iterable[tuple[str, str, int]] = (),
             attrs: dict[str, str] | None = None) -> str:
        """Disk ``name`` under device folder ``parent``; partitions as (name, devno, size)."""
        rel = f"{parent}/block/{name}"
        self._node(rel, name, devno, size)
        self.write(f"{rel}/removable", "1" if removable else "0")
        self.write(f"{rel}/ro", "1" if read_only else "0")
        for key, value in (attrs or {}).items():
            self.write(f"{rel}/{key}", value)
        if parent != VIRTUAL:
            self.link(f"{rel}/device", parent)
        self.link(f"block/{name}", rel)
        for n, (pname, pdevno, psize) in enumerate(partitions, 1):
            self._node(f"{rel}/{pname}", pname, pdevno, psize)
            self.write(f"{rel}/{pname}/partition", str(n))
        return rel

    def stacked(self, name: str, devno: str, size: int, on: Iterable[str],
                dm_name: str = "") -> None:
        """A dm/md device ``name`` built on the block devices ``on``."""
        rel = f"{VIRTUAL}/block/{name}"
        self._node(rel, name, devno, size)
        self.link(f"block/{name}", rel)
        if dm_name:
            self.write(f"{rel}/dm/name", dm_name)
        for lower in on:
            lower_rel = os.path.relpath(os.path.realpath(self.root / "class/block" / lower),
                                        self.root)
            self.link(f"{rel}/slaves/{lower}", lower_rel)
            self.link(f"{lower_rel}/holders/{name}", rel)

    def usb_device(self, rel: str, *, serial: str, vendor: str = "", product: str = "",
                   interface_driver: str = "usb-storage") -> None:
        """The USB device folder (idVendor, serial, ...) and its interface with its driver."""
        self.write(f"{rel}/idVendor", "0781")
        self.write(f"{rel}/idProduct", "5581")
        self.write(f"{rel}/serial", serial)
        if vendor:
            self.write(f"{rel}/manufacturer", vendor)
        if product:
            self.write(f"{rel}/product", product)
        iface = f"{rel}/{os.path.basename(rel)}:1.0"
        self.write(f"{iface}/bInterfaceNumber", "00")
        self.link(f"{iface}/driver", f"bus/usb/drivers/{interface_driver}")
