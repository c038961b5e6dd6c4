"""Helpers for the ``steward patch apply`` tests: a config whose only check is the audit
(of the installroot), and the command run as a subprocess against a test bed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent.registry import discover
from tests.conftest import REPO
from tests.patch.repo import Bed

UNDO = "dnf --installroot={root} --releasever=9 --setopt=reposdir={root}/etc/yum.repos.d " \
       "history undo {tid}"


def checks_off() -> str:
    """Every check but the audit off: health is the audit of the installroot (its
    system.crypto_policy rule reads <sysroot>/etc/crypto-policies/state/current)."""
    return "".join(f"[checks.{n}]\nenabled = false\n"
                   for n in sorted(discover().checks) if n != "audit")


def write_conf(tmp_path: Path, extra: str = "") -> Path:
    conf = tmp_path / "steward.toml"
    conf.write_text(checks_off() + extra)
    conf.chmod(0o600)
    return conf


def apply(bed: Bed, tmp_path: Path, *args: str, extra: str = "",
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    conf = write_conf(tmp_path, extra)
    return subprocess.run(
        [sys.executable, "-m", "agent", "patch", "apply", "--installroot", str(bed.root),
         "--config", str(conf), "--state-dir", str(tmp_path / "state"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **(env or {})})


def versions(bed: Bed, *names: str) -> tuple[str, ...]:
    v = bed.versions()
    return tuple(v.get(n, "") for n in names)


def head(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout.splitlines()[0]
