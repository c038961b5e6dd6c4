"""The reboot after a patch: the policy's decision (never | when-needed |
always-after-kernel), the loop guard (at most one reboot per patch window) and the boot marker
that tells, at the next start, whether the reboot happened.

``<state_dir>/patch/reboot.json`` is written just before the reboot command runs: the boot id,
when, why and the window's end. ``after_reboot`` (the daemon, at start) settles it into
``last-reboot.json``; both files keep a second reboot out of the same window.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.fileio import write_atomic
from agent.model import Status
from agent.quote import quote
from agent.system.commands import CommandError, CommandRunner
from patch.reboot import RebootHint, core_packages_in

log = logging.getLogger(__name__)

MARKER = "patch/reboot.json"
SETTLED = "patch/last-reboot.json"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
GRACE = 300.0  # seconds a requested reboot may take before "it did not happen"
REBOOT_TIMEOUT = 60.0  # for the reboot command itself (systemctl reboot only queues a job)
POLICIES = ("never", "when-needed", "always-after-kernel")
# kernel-* packages that are not a booted kernel (headers, tools, build macros).
_NOT_BOOTED = re.compile(r"-(?:devel|headers|doc|tools|tools-libs|tools-libs-devel|"
                         r"srpm-macros|rpm-macros|abi-stablelists|abi-whitelists|"
                         r"cross-headers|devel-matched)$")


def is_kernel(name: str) -> bool:
    return name == "kernel" or (name.startswith("kernel-") and not _NOT_BOOTED.search(name))


@dataclass(frozen=True)
class Decision:
    """What the policy says about a reboot."""

    policy: str
    needed: tuple[str, ...]  # the packages that call for a reboot (empty: none needed)
    reboot: bool  # the policy reboots (before the loop guard and the host's say)
    why_not: str = ""  # when needed but not rebooting

    @property
    def pending(self) -> bool:
        return bool(self.needed) and not self.reboot


def decide(policy: str, changed: Iterable[str], hint: RebootHint | None = None,
           extra_core: Iterable[str] = ()) -> Decision:
    """``changed``: the names the transaction changed; ``hint``: needs-restarting -r (core
    packages installed since boot, also by earlier runs), None where it cannot be told."""
    if policy not in POLICIES:
        raise ValueError(f"reboot policy {quote(policy)} is not one of {', '.join(POLICIES)}")
    names = sorted(set(changed))
    core = set(core_packages_in(names, extra_core)) | set(hint.packages if hint else ())
    if hint is not None and hint.needed and not hint.packages:
        core.add("(needs-restarting -r)")
    kernels = [n for n in names if is_kernel(n)]
    needed = tuple(sorted(core | set(kernels)))
    if policy == "never":
        return Decision(policy, needed, False, "reboot policy is never" if needed else "")
    if policy == "when-needed":
        return Decision(policy, needed, bool(needed))
    if kernels:
        return Decision(policy, needed, True)
    return Decision(policy, needed, False, "reboot policy always-after-kernel, and no kernel "
                    "was updated" if needed else "")


# --- the marker and the loop guard ----------------------------------------------------------

def boot_id() -> str:
    return BOOT_ID.read_text().strip()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.error("%s is unreadable (%s); ignoring it", path, e)
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)


def guard(state_dir: Path, now: float) -> str:
    """Why no reboot may happen now ("" if one may): a reboot was already requested in a
    window that is still open."""
    for name in (MARKER, SETTLED):
        rec = _read(state_dir / name)
        if rec and float(rec.get("window_end", 0)) > now:
            return (f"a reboot was already requested at {_local(float(rec['requested']))} in "
                    f"this patch window (at most one per window; {state_dir / name})")
    return ""


def record(state_dir: Path, *, now: float, window_end: float, command: Sequence[str],
           packages: Sequence[str], boot: str | None = None) -> Path:
    """Write the marker; done just before the reboot command runs."""
    path = state_dir / MARKER
    _write(path, {"boot_id": boot or boot_id(), "requested": now, "window_end": window_end,
                  "command": list(command), "packages": list(packages),
                  "state": "requested"})
    return path


def settle(state_dir: Path, state: str, now: float) -> dict[str, Any] | None:
    """Move the marker to last-reboot.json with its ``state`` (done, not-done, failed): it
    keeps the loop guard for the rest of the window and is not reported again."""
    path = state_dir / MARKER
    rec = _read(path)
    if rec is None:
        return None
    _write(state_dir / SETTLED, {**rec, "state": state, "settled": now})
    path.unlink()
    return rec


def run_reboot(runner: CommandRunner, argv: Sequence[str]) -> str:
    """Run the reboot command; "" when it was accepted, else why not."""
    try:
        runner.run(list(argv), timeout=REBOOT_TIMEOUT)
    except CommandError as e:
        return str(e)
    return ""


@dataclass(frozen=True)
class RebootNews:
    """What ``after_reboot`` found: the patch reboot happened, or did not."""

    happened: bool
    requested: float
    packages: tuple[str, ...]
    summary: str

    @property
    def status(self) -> Status:
        return Status.OK if self.happened else Status.CRIT


def after_reboot(state_dir: Path, now: float,
                 current_boot: str | None = None) -> RebootNews | None:
    """Called by the daemon at start. A marker with another boot id: the reboot happened
    (the caller checks health and reports). The same boot id and older than GRACE: it did
    not happen. Either way the marker is settled (moved to last-reboot.json, which keeps
    the loop guard for the rest of the window). None: nothing to report (no marker, or the
    reboot may still be under way)."""
    path = state_dir / MARKER
    rec = _read(path)
    if rec is None:
        return None
    boot = current_boot or boot_id()
    requested = float(rec.get("requested", 0.0))
    packages = tuple(rec.get("packages", ()))
    why = f" (for {', '.join(packages)})" if packages else ""
    if rec.get("boot_id") != boot:
        news = RebootNews(True, requested, packages, f"rebooted after patching{why}: "
                          f"requested {_local(requested)}, back up")
    elif now - requested > GRACE:
        cmd = " ".join(rec.get("command", []))
        news = RebootNews(False, requested, packages, f"the reboot after patching{why} did "
                          f"not happen: '{cmd}' was run {_local(requested)} and the machine "
                          "is still in the same boot")
    else:
        return None
    settle(state_dir, "done" if news.happened else "not-done", now)
    return news


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
