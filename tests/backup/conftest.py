"""Fixtures for the backup tests: real filesystems on loop devices and the steward CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_steward
from tests.fstree import have_loop, loop_fs

root_loop = [pytest.mark.root,
             pytest.mark.skipif(not have_loop(), reason="needs root and loop devices")]


def backup(*args: str, config: Path | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    return run_steward("backup", *args, *extra, timeout=timeout)


def generations(target: Path) -> list[dict[str, object]]:
    r = backup("list", "--target", str(target), "--format", "json")
    assert r.returncode == 0, r.stderr
    gens: list[dict[str, object]] = json.loads(r.stdout)["generations"]
    return gens


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    t = tmp_path / "target"
    t.mkdir()
    return t


@pytest.fixture
def small_target(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB ext4 filesystem to fill up."""
    with loop_fs("ext4", 96, tmp_path) as mnt:
        yield mnt
