"""``steward run`` and patching: the reboot a patch run asked for is reported when the daemon
starts again, and a configured window is scheduled (shown by ``steward status``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from patch.rebooting import record
from tests.conftest import QUIET, REPO, start_daemon


def _daemon(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen[str], Path, Path]:
    return start_daemon(tmp_path, QUIET + extra)


def _wait(cond, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)


def test_a_reboot_asked_for_by_a_patch_run_is_reported_once_the_machine_is_back(tmp_path):
    state = tmp_path / "state"
    (state / "patch").mkdir(parents=True)
    record(state, now=time.time() - 600, window_end=time.time() + 3600,
           command=["/usr/bin/systemctl", "reboot"], packages=["kernel-core"],
           boot="0" * 32)  # another boot than this one: the reboot happened
    proc, log, _ = _daemon(tmp_path)
    try:
        _wait(lambda: "patch:reboot" in log.read_text())
        line = next(x for x in log.read_text().splitlines() if "patch:reboot" in x)
        assert "ALERT" in line and " OK patch:reboot: rebooted after patching (for " \
            "kernel-core)" in line
        assert not (state / "patch" / "reboot.json").exists()  # settled: said once
        assert json.loads((state / "patch" / "last-reboot.json").read_text())["state"] == "done"
    finally:
        _stop(proc)


def test_a_reboot_that_did_not_happen_is_crit(tmp_path):
    state = tmp_path / "state"
    (state / "patch").mkdir(parents=True)
    record(state, now=time.time() - 3600, window_end=time.time() + 3600,
           command=["/usr/bin/systemctl", "reboot"], packages=["glibc"])  # this boot's id
    proc, log, _ = _daemon(tmp_path)
    try:
        _wait(lambda: "patch:reboot" in log.read_text())
        line = next(x for x in log.read_text().splitlines() if "patch:reboot" in x)
        assert " CRIT patch:reboot: the reboot after patching (for glibc) did not happen" in line
    finally:
        _stop(proc)


def test_a_configured_window_is_scheduled_and_shown_by_steward_status(tmp_path):
    proc, _, state = _daemon(tmp_path, '[patch]\nschedule = "Sun 03:00"\nrandom_delay = 0\n')
    try:
        _wait((state / "status.json").exists)
        status = json.loads((state / "status.json").read_text())
        assert status["patch"]["schedule"] == "Sun 03:00"
        start = datetime.fromisoformat(status["patch"]["next_start"]).astimezone()
        assert (start.weekday(), start.hour, start.minute) == (6, 3, 0)  # Sunday 03:00 here
        assert timedelta(0) < start - datetime.now().astimezone() <= timedelta(days=7)
        shown = subprocess.run([sys.executable, "-m", "agent", "status", "--state-dir",
                                str(state)], cwd=REPO, capture_output=True, text=True,
                               timeout=30, check=False)
        assert "patch window: Sun 03:00; next start " in shown.stdout
    finally:
        _stop(proc)
