"""``patch.apply`` with the host's actions switched on against the real dnf 4 in an
installroot: maintenance mode during the run, the reboot policy with the core-package list and
the loop guard (reboot_command replaced by a recorder script)."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path
from typing import ClassVar

import pytest

from agent.config import from_tables, tomllib
from agent.config.schema import CheckOptions
from agent.env import Env
from agent.memory import Maintenance
from agent.model import Check, Result, Status
from agent.registry import Registry
from agent.runner import resolve
from agent.state import StateDir
from agent.system.commands import CommandRunner
from checks.audit import AuditCheck
from patch.apply import Patcher, Request
from patch.dnf import Dnf
from patch.outcome import Outcome
from patch.rebooting import after_reboot, guard
from patch.report import publish
from tests.patch.applybed import apply
from tests.patch.repo import Bed

pytestmark = pytest.mark.root


class MaintenanceProbe(Check):
    """Records the maintenance mode steward's state dir holds while health is checked."""

    name: ClassVar[str] = "probe"
    Options = CheckOptions
    seen: ClassVar[list[dict[str, object]]] = []

    def run(self, env: Env) -> list[Result]:
        m = StateDir(env.state_dir).maintenance()
        self.seen.append({"until": m.until, "units": dict(m.units)})
        return [self.result(Status.OK, "looked")]


def patcher(bed: Bed, tmp_path: Path, extra: str = "", probe: bool = False,
            exit_code: int = 0) -> tuple[Patcher, io.StringIO]:
    registry = Registry(checks={"audit": AuditCheck, **({"probe": MaintenanceProbe}
                                                        if probe else {})})
    recorder = tmp_path / "reboot-recorder"
    recorder.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'reboots'}\n"
                        f"echo 'Failed to reboot: refused' >&2\nexit {exit_code}\n")
    recorder.chmod(0o755)
    data = tomllib.loads(f'[patch]\nreboot_command = ["{recorder}", "reboot"]\n{extra}')
    config = from_tables(data, "test", registry.checks)
    env = resolve(registry, Env(config, state_dir=tmp_path / "state"))
    stdout = io.StringIO()
    return Patcher(env, registry, Dnf(CommandRunner(), bed.root, timeout=120), host="testhost",
                   report=lambda out: publish(out, env.config, env.state_dir, clock=env.clock,
                                              stream=stdout),
                   sleep=lambda s: None), stdout


def host_run(p: Patcher, bed: Bed, end: float, **kw: object) -> Outcome:
    return p.run(Request(security=False, installroot=bed.root, window_end=end,
                         host_actions=True, **kw))  # type: ignore[arg-type]


def reboots(tmp_path: Path) -> list[str]:
    path = tmp_path / "reboots"
    return path.read_text().splitlines() if path.exists() else []


def test_when_needed_reboots_once_after_a_core_package_and_never_twice_in_a_window(
        bed, tmp_path):
    bed.enable("core")
    p, stdout = patcher(bed, tmp_path)
    end = time.time() + 3600
    out = host_run(p, bed, end)
    assert reboots(tmp_path) == ["reboot"]
    assert out.reboot is not None and out.reboot.needed == ("linux-firmware",)
    assert out.exit_code() == 0
    assert f"Reboot: rebooting now (linux-firmware) with: {tmp_path}/reboot-recorder reboot" \
        in stdout.getvalue()
    marker = json.loads((tmp_path / "state/patch/reboot.json").read_text())
    assert marker["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert marker["window_end"] == end and marker["packages"] == ["linux-firmware"]

    # the machine did not go down (a recorder): linux-firmware back to 1.0, patch again
    subprocess.run([*bed.dnf_argv(), "-y", "-q", "history", "undo", "last"], check=True,
                   capture_output=True)
    p, stdout = patcher(bed, tmp_path)
    again = host_run(p, bed, end)
    assert "linux-firmware" in [c.name for c in again.changes]
    assert reboots(tmp_path) == ["reboot"]  # no second reboot in the window
    assert again.exit_code() == 1
    assert "Reboot: PENDING (linux-firmware), not done: a reboot was already requested at" \
        in stdout.getvalue()
    assert stdout.getvalue().startswith("patched: 3 packages, 1 security advisory; reboot "
                                        "pending\n")


def test_a_failing_reboot_command_is_reported_and_not_retried_in_the_window(bed, tmp_path):
    bed.enable("core")
    p, stdout = patcher(bed, tmp_path, exit_code=1)
    now = time.time()
    out = host_run(p, bed, now + 3600)
    assert reboots(tmp_path) == ["reboot"]
    assert out.exit_code() == 1 and "Failed to reboot: refused" in out.reboot_error
    assert stdout.getvalue().count("\n-- \nsteward on testhost") == 2  # a second report
    first, second = stdout.getvalue().split("\n-- \n")[:2]
    assert "Reboot: rebooting now (linux-firmware)" in first
    assert "patch FAILED: reboot failed: " in second
    assert "Reboot: FAILED (linux-firmware): " in second
    settled = json.loads((tmp_path / "state/patch/last-reboot.json").read_text())
    assert settled["state"] == "failed"
    assert not (tmp_path / "state/patch/reboot.json").exists()
    assert "already requested" in guard(tmp_path / "state", now + 60)
    assert after_reboot(tmp_path / "state", now + 60) is None  # said already, not again


def test_policy_never_does_not_reboot_and_reports_the_reboot_pending(bed, tmp_path):
    bed.enable("core")
    p, stdout = patcher(bed, tmp_path, extra='reboot = "never"\n')
    out = host_run(p, bed, time.time() + 3600)
    assert reboots(tmp_path) == []
    assert out.exit_code() == 1
    assert "Reboot: PENDING (linux-firmware), not done: reboot policy is never" \
        in stdout.getvalue()
    assert not (tmp_path / "state/patch/reboot.json").exists()


def test_no_core_package_no_reboot_and_the_cli_never_reboots_an_installroot(bed, tmp_path):
    p, _ = patcher(bed, tmp_path)
    out = host_run(p, bed, time.time() + 3600)
    assert out.reboot is not None and not out.reboot.needed
    assert reboots(tmp_path) == [] and out.exit_code() == 0
    bed.enable("core")
    proc = apply(bed, tmp_path, "--all")  # the CLI: --installroot, nothing on the host
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Reboot: the target needs a reboot (linux-firmware); nothing on this host is " \
           "rebooted with --installroot" in proc.stdout


def test_maintenance_mode_holds_during_the_run_and_is_restored_after(bed, tmp_path):
    state = StateDir(tmp_path / "state")
    state.ensure()
    earlier = Maintenance(None, {"postfix.service": time.time() + 60.0})
    state.set_maintenance(earlier)
    MaintenanceProbe.seen.clear()
    p, _ = patcher(bed, tmp_path, probe=True, extra="duration = 30\nrandom_delay = 0\n")
    started = time.time()
    host_run(p, bed, started + 1800)
    assert len(MaintenanceProbe.seen) == 2  # health before and after
    for seen in MaintenanceProbe.seen:
        assert seen["until"] is not None and \
            started + 1790 < float(seen["until"]) < time.time() + 1810  # type: ignore[arg-type]
        assert seen["units"] == earlier.units  # kept while the whole machine is covered
    assert StateDir(tmp_path / "state").maintenance() == earlier


def test_maintenance_is_restored_when_the_run_fails_or_breaks(bed, tmp_path):
    bed.enable("broken")
    p, _ = patcher(bed, tmp_path)
    out = host_run(p, bed, time.time() + 3600)
    assert out.exit_code() == 3 and out.failure_kind == "transaction"
    assert json.loads((tmp_path / "state/maintenance.json").read_text()) == \
        {"until": None, "units": {}}

    def broken_report(out: Outcome) -> None:
        assert StateDir(tmp_path / "state").maintenance().until is not None
        raise RuntimeError("the report failed")

    p.report = broken_report
    with pytest.raises(RuntimeError, match="the report failed"):
        host_run(p, bed, time.time() + 3600)
    assert json.loads((tmp_path / "state/maintenance.json").read_text()) == \
        {"until": None, "units": {}}
