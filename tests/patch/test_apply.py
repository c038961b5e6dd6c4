"""``steward patch apply`` against the real dnf 4 in an installroot (tests/patch/repo.py), run
as a subprocess: what gets upgraded, dnf failing, health after the patch, the report mail and
the pre-patch backup. The host's own steps (maintenance, reboot) are in test_apply_host.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest

from tests.conftest import run_steward
from tests.mailserver import MailServer
from tests.netutil import free_port
from tests.patch.applybed import UNDO, apply, head, versions
from tests.patch.repo import Bed
from tests.schemas import validate

pytestmark = pytest.mark.root


# --- what gets upgraded -------------------------------------------------------------------

def test_security_upgrades_only_the_advisorys_package_and_names_advisory_and_severity(
        bed, tmp_path):
    proc = apply(bed, tmp_path, "--security")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(bed, "hello-appl", "mailfilter") == ("1.1-1", "1.0-1")
    assert head(proc) == "patched: 1 package, 1 security advisory"
    assert "  hello-appl.noarch: 1.0-1 -> 1.1-1 (upgrade)" in proc.stdout
    assert "  RLSA-2025:0001 security Important CVE-2025-0001 Important: hello-appl " \
           "security update (reboot suggested)" in proc.stdout
    assert "RLBA-2025:0002" not in proc.stdout
    assert "Health before: 3 OK, 2 CRIT" in proc.stdout  # the installroot's audit
    assert "Health after:  3 OK, 2 CRIT" in proc.stdout
    assert "dnf history: 1 before, this patch is transaction 2 (Success)" in proc.stdout
    assert "report not mailed: no [notify.email] recipients configured" in proc.stdout
    assert not (tmp_path / "state/maintenance.json").exists()  # the host is not touched


def test_all_upgrades_both_with_their_advisories(bed, tmp_path):
    proc = apply(bed, tmp_path, "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(bed, "hello-appl", "mailfilter") == ("1.1-1", "1.1-1")
    assert head(proc) == "patched: 2 packages, 1 security advisory"
    assert "  RLBA-2025:0002 bugfix mailfilter bug fix update" in proc.stdout


def test_the_mode_comes_from_the_config_when_not_given(bed, tmp_path):
    proc = apply(bed, tmp_path, extra='[patch]\nmode = "all"\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(bed, "hello-appl", "mailfilter") == ("1.1-1", "1.1-1")


def test_exclude_is_honoured(bed, tmp_path):
    proc = apply(bed, tmp_path, "--all", "--exclude", "hello-*")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert versions(bed, "hello-appl", "mailfilter") == ("1.0-1", "1.1-1")
    assert "Mode: all, excluding hello-*" in proc.stdout


def test_configured_and_given_excludes_add_up_and_nothing_to_do_is_success(bed, tmp_path):
    proc = apply(bed, tmp_path, "--all", "--exclude", "hello-appl",
                 extra='[patch]\nexclude = ["mailfilter"]\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert head(proc) == "patch: nothing to do"
    assert "Packages changed (0):\n  none" in proc.stdout
    assert versions(bed, "hello-appl", "mailfilter") == ("1.0-1", "1.0-1")


def test_a_dry_run_changes_nothing_and_says_what_it_would_do(bed, tmp_path):
    bed.enable("core")
    before = bed.versions()
    proc = apply(bed, tmp_path, "--all", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert bed.versions() == before
    assert head(proc) == "patch dry run: 3 packages would change, 1 security advisory"
    assert "DRY RUN: nothing was changed" in proc.stdout
    assert "  linux-firmware.noarch: 1.0-1 -> 1.1-1 (upgrade)" in proc.stdout
    assert "Reboot: would be needed (linux-firmware): policy when-needed would reboot" \
        in proc.stdout
    assert "dnf history: 1 before\n" in proc.stdout
    assert not (tmp_path / "state/maintenance.json").exists()
    assert not (tmp_path / "state/patch").exists()


# --- dnf failing --------------------------------------------------------------------------

def test_a_failing_post_scriptlet_is_exit_3_and_a_transaction_error(bed, tmp_path):
    bed.enable("broken")
    proc = apply(bed, tmp_path, "--all")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert head(proc).startswith("patch FAILED: dnf transaction error: scriptlet failed")
    assert "patched:" not in proc.stdout
    assert "Error in POSTIN scriptlet in rpm package postfail" in proc.stdout
    assert "  postfail.noarch: 1.0-1 -> 1.1-1 (upgrade)" in proc.stdout  # rpm kept it
    assert "Reboot: not considered: the patch failed" in proc.stdout
    assert "Rollback: " + UNDO.format(root=bed.root, tid=2) in proc.stdout


def hold_dnf_lock(bed: Bed) -> subprocess.Popen[bytes]:
    """dnf 4's lock: a file holding the pid of a live process (see test_dnf)."""
    holder = subprocess.Popen(["sleep", "120"])
    (bed.root / "var/cache/dnf/metadata_lock.pid").write_text(str(holder.pid))
    return holder


def window_end(seconds: float) -> dict[str, str]:
    end = datetime.fromtimestamp(time.time() + seconds, timezone.utc)
    return {"STEWARD_PATCH_WINDOW_END": end.isoformat()}


@pytest.mark.slow
def test_a_held_lock_is_retried_until_the_window_ends_then_reported(bed, tmp_path):
    holder = hold_dnf_lock(bed)
    try:
        started = time.monotonic()
        proc = apply(bed, tmp_path, "--security", env=window_end(7),
                     extra="[patch]\nretry_interval = 0.05\n")  # 3 s
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert head(proc).startswith("patch FAILED: dnf was locked until the window closed (")
    attempts = [line for line in proc.stdout.splitlines() if f"pid {holder.pid}" in line]
    assert len(attempts) >= 2, proc.stdout  # tried, waited 3 s, tried again
    assert "trying again in 3 s" in proc.stderr
    assert 3 < took < 60
    assert versions(bed, "hello-appl") == ("1.0-1",)


@pytest.mark.slow
def test_a_lock_released_within_the_window_is_waited_out(bed, tmp_path):
    holder = hold_dnf_lock(bed)
    release = threading.Timer(2.0, lambda: (holder.kill(), holder.wait()))  # no zombie
    release.start()
    try:
        proc = apply(bed, tmp_path, "--security", env=window_end(120),
                     extra="[patch]\nretry_interval = 0.05\n")
    finally:
        release.cancel()
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert head(proc) == "patched: 1 package, 1 security advisory"
    assert "dnf attempts that did not go through:" in proc.stdout
    assert versions(bed, "hello-appl") == ("1.1-1",)


def test_a_bad_window_end_or_exclude_is_a_usage_error(bed, tmp_path):
    bad = apply(bed, tmp_path, env={"STEWARD_PATCH_WINDOW_END": "sunday"})
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr
    bad = apply(bed, tmp_path, "--exclude=-y")
    assert bad.returncode == 2 and "--exclude: starts with '-'" in bad.stderr


# --- health after the patch ---------------------------------------------------------------

def test_health_worse_after_the_patch_is_crit_with_the_exact_undo_command(bed, tmp_path):
    bed.enable("risky")
    proc = apply(bed, tmp_path, "--all")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert head(proc) == ("patch FAILED: health worse after patching "
                          "(audit:system.crypto_policy)")
    assert "  worse: audit:system.crypto_policy: OK -> WARN: System crypto policy is not " \
           "LEGACY: policy LEGACY" in proc.stdout
    undo = UNDO.format(root=bed.root, tid=2)
    assert f"Rollback: {undo}\n  not run (--rollback-on-failure not given)" in proc.stdout
    assert versions(bed, "cryptopol") == ("1.1-1",)
    # What the Cockpit page shows: health before and after, and the check that got worse.
    rep = patch_last(tmp_path)["report"]
    assert rep["status"] == "CRIT" and rep["headline"] == head(proc)
    assert rep["health"]["worse"] == [{"check": "audit:system.crypto_policy", "before": "OK",
                                       "after": "WARN", "summary": rep["health"]["worse"][0][
                                           "summary"]}]
    assert "not LEGACY" in rep["health"]["worse"][0]["summary"]
    before, after = rep["health"]["before"], rep["health"]["after"]
    assert before["counts"] in proc.stdout and after["counts"] in proc.stdout
    assert after["checks"] == before["checks"] > 0
    assert {p["name"] for p in rep["packages"]} >= {"cryptopol"}
    assert rep["rollback"]["command"] == undo and rep["rollback"]["ran"] is False
    assert rep["text"] in proc.stdout  # the report as printed (and mailed)
    # the command works as printed (a person answers dnf's question)
    done = subprocess.run(shlex.split(undo), input="y\n", capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert versions(bed, "cryptopol", "mailfilter") == ("1.0-1", "1.0-1")


def test_rollback_on_failure_restores_the_old_version_and_health(bed, tmp_path):
    bed.enable("risky")
    proc = apply(bed, tmp_path, "--all", "--rollback-on-failure")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert versions(bed, "cryptopol", "hello-appl") == ("1.0-1", "1.0-1")
    assert head(proc) == ("patch FAILED: health worse after patching "
                          "(audit:system.crypto_policy); rolled back, health recovered")
    assert "  run: transaction 3\n    cryptopol.noarch: 1.1-1 -> 1.0-1 (downgrade)" \
        in proc.stdout
    assert "  health after the rollback: 3 OK, 2 CRIT: recovered" in proc.stdout
    assert "Reboot: not done: the transaction was rolled back" in proc.stdout
    rep = patch_last(tmp_path)["report"]
    assert rep["rollback"]["ran"] is True and rep["rollback"]["recovered"] is True
    assert rep["reboot"] == "not done: the transaction was rolled back"


def patch_last(tmp_path) -> dict:
    """``steward patch last --format json`` after apply(), validated against its schema."""
    r = run_steward("patch", "last", "--format", "json", "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    validate(doc, "patch-last.schema.json")
    return dict(doc)


def test_patch_last_before_any_run_and_with_a_bad_report_file(tmp_path):
    state = tmp_path / "state"
    assert patch_last(tmp_path)["report"] is None
    text = run_steward("patch", "last", "--state-dir", str(state))
    assert text.returncode == 0 and "no patch run has reported" in text.stdout
    (state / "patch").mkdir(parents=True)
    (state / "patch" / "last-report.json").write_text('{"status": "OK"}\n')
    r = run_steward("patch", "last", "--format", "json", "--state-dir", str(state))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{state}/patch/last-report.json: not a patch report (no headline" in r.stderr


# --- the report mail ----------------------------------------------------------------------

def email_conf(port: int) -> str:
    return (f'[notify.email]\nto = [{{ address = "admin@example.com", min_severity = "CRIT" '
            f'}}]\nfrom = "steward@mail1.test"\nrelays = ["smtp://127.0.0.1:{port}"]\n'
            "timeout = 5\n")


def test_the_report_is_mailed_with_the_same_text_as_stdout(bed, tmp_path):
    with MailServer(tmp_path) as srv:
        proc = apply(bed, tmp_path, "--security", extra=email_conf(srv.port))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [msg] = srv.messages()
    host = os.uname().nodename
    assert msg["Subject"] == f"[steward] {host}: patched: 1 package, 1 security advisory"
    assert msg["X-Steward-Kind"] == "patch" and msg["To"] == "admin@example.com"
    text = msg.get_body(("plain",)).get_content()
    assert text.replace("\r\n", "\n") in proc.stdout
    html = msg.get_body(("html",)).get_content()
    assert "RLSA-2025:0001" in html and "Important" in html
    assert f"report mailed to admin@example.com via smtp://127.0.0.1:{srv.port}" in proc.stdout
    assert not list((tmp_path / "state/outbox").glob("*.eml"))


def test_a_report_that_cannot_be_delivered_stays_queued_and_exits_1(bed, tmp_path):
    proc = apply(bed, tmp_path, "--security", extra=email_conf(free_port()))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert versions(bed, "hello-appl") == ("1.1-1",)
    assert "report NOT delivered (" in proc.stdout and "steward run retries it" in proc.stdout
    [queued] = (tmp_path / "state/outbox").glob("*.eml")
    assert "patched: 1 package, 1 security advisory" in queued.read_text()


# --- pre-patch backup ---------------------------------------------------------------------

def test_pre_backup_without_a_target_is_a_config_error(bed, tmp_path):
    proc = apply(bed, tmp_path, extra="[patch]\npre_backup = true\n")
    assert proc.returncode == 2
    assert "[patch] pre_backup = true needs [backup] target" in proc.stderr


def test_a_failed_pre_backup_stops_the_patch(bed, tmp_path):
    missing = tmp_path / "no-such-drive"
    proc = apply(bed, tmp_path, "--all",
                 extra=f'[patch]\npre_backup = true\n[backup]\ntarget = "{missing}"\n')
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert head(proc).startswith("patch FAILED: pre-patch backup failed: ")
    assert versions(bed, "hello-appl", "mailfilter") == ("1.0-1", "1.0-1")


@pytest.mark.slow
def test_a_pre_backup_is_committed_before_the_patch(bed, tmp_path):
    target = tmp_path / "drive"
    target.mkdir()
    proc = apply(bed, tmp_path, "--security",
                 extra=f'[patch]\npre_backup = true\n[backup]\ntarget = "{target}"\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Pre-patch backup: generation " in proc.stdout
    assert f"committed in {target}" in proc.stdout
    assert versions(bed, "hello-appl") == ("1.1-1",)
