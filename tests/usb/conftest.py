"""Loop-device disks for the format tests, and ``steward usb`` run in-process the way
agent/cli.py runs it (UsageError -> exit 2)."""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from agent.errors import UsageError
from tests.fstree import have_loop
from usbimage import cli

root_loop = [pytest.mark.root,
             pytest.mark.skipif(not have_loop(), reason="needs root and loop devices")]
MiB = 2**20


def sh(*argv: str, input: str | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120,
                          check=False)
    if check and done.returncode:
        raise AssertionError(f"{argv} exited {done.returncode}: {done.stderr}")
    return done.stdout


class FakeTty(io.StringIO):
    """Standard input that claims to be a terminal, holding what the person types."""

    def isatty(self) -> bool:
        return True


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steward")
    sub = p.add_subparsers(dest="command")
    cli.add_parsers(sub, lambda _: None)
    return p


def usb(*argv: str, stdin: io.StringIO | None = None, env: Any = None,
        system_mountinfo: str | None = None) -> Outcome:
    """``steward usb ARGV`` in-process; stdin defaults to an empty non-terminal."""
    args = parser().parse_args(["usb", *argv])
    out, err = io.StringIO(), io.StringIO()
    try:
        code = cli.run(args, env, stdin=stdin if stdin is not None else io.StringIO(),
                       out=out, err=err, system_mountinfo=system_mountinfo)
    except UsageError as e:
        code = 2
        err.write(f"steward: {e}\n")
    return Outcome(code, out.getvalue(), err.getvalue())


def fingerprint(dev: str) -> tuple[str, str]:
    """The partition table (sfdisk --dump, "" without one) and a digest of the first and last
    MiB of ``dev``: what a refused or aborted format must leave as it was."""
    dump = sh("sfdisk", "--dump", dev, check=False)
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        h.update(f.read(MiB))
        f.seek(-MiB, 2)
        h.update(f.read(MiB))
    return dump, h.hexdigest()


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Makes sparse-file loop devices of a size in MiB; detaches them afterwards."""
    devs: list[str] = []

    def make(size_mib: int) -> str:
        img = tmp_path / f"disk{len(devs)}.img"
        with open(img, "wb") as f:
            f.truncate(size_mib * MiB)
        dev = sh("losetup", "-f", "--show", str(img)).strip()
        devs.append(dev)
        # The kernel keeps partitions an earlier user added with partx on this loop number.
        sh("partx", "-d", dev, check=False)
        return dev

    yield make
    for dev in reversed(devs):
        sh("partx", "-d", dev, check=False)
        sh("losetup", "-d", dev, check=False)


def partition(dev: str, fstype: str | None = "ext4") -> str:
    """Give ``dev`` an MBR table with one partition (with a filesystem); returns its path."""
    sh("sfdisk", "--quiet", dev, input="label: dos\nsize=64MiB, type=83\n")
    sh("partx", "-u", dev)
    part = sh("lsblk", "-nro", "PATH", dev).split()[1]
    if fstype:
        sh(f"mkfs.{fstype}", "-q", part)
    return part
