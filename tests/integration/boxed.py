"""Install this checkout of steward into a test container, as the appliance would have it:
the code and its installed metadata (entry points) under /opt/steward, /usr/bin/steward, and
units/steward.service as shipped. The container's Debian python3 and python3-* provide the
dependencies."""

from __future__ import annotations

import importlib.metadata as md
import shutil
from pathlib import Path

from tests.integration.nspawn import Container

REPO = Path(__file__).resolve().parents[2]

PACKAGES = ("agent", "checks", "backup", "patch", "usbimage", "actions")
WRAPPER = """#!/usr/bin/python3
import sys
sys.path.insert(0, "/opt/steward")
from agent.cli import main
main()
"""


def install(box: Container) -> str:
    """Copy steward into the container; returns the directory it lives in."""
    assert box.root is not None
    dest = box.root / "opt/steward"
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    dist = md.distribution("steward")
    info = dest / "steward-0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(dist.read_text("METADATA") or "")
    (info / "entry_points.txt").write_text(dist.read_text("entry_points.txt") or "")
    box.write_file("/usr/bin/steward", WRAPPER, mode=0o755)
    box.write_file("/etc/systemd/system/steward.service",
                   (REPO / "units" / "steward.service").read_text())
    return "/opt/steward"
